"""Schemathesis over /api/schema/ against a live server: no generated request gets a 5xx, as any role.

For every operation the schema documents and every role (and no credentials), Hypothesis draws
requests from the schema (valid and invalid ones), half of them aimed at the real study and the
annotator's real task so they get past the access checks.  Derandomized, so a failure repeats.
"""
from __future__ import annotations

import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error

from annotation import services

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = 12  # per operation and caller: 12 operations x 6 callers x 12 = 864 requests


@pytest.fixture(autouse=True)
def hypothesis_home_outside_the_checkout(tmp_path):
    """Hypothesis keeps caches in ./.hypothesis; this test leaves nothing in the working tree."""
    from hypothesis import configuration

    before = configuration.storage_directory()
    configuration.set_hypothesis_home_dir(str(tmp_path / "hypothesis"))
    yield
    configuration.set_hypothesis_home_dir(str(before))


def test_no_request_the_schema_allows_or_nearly_allows_makes_a_server_error(
        live_server, study_factory, evaluator, annotators, manager):
    started = time.monotonic()
    study = study_factory()
    callers = {"anonymous": None, "annotator": annotators[0], "second annotator": annotators[1],
               "manager": manager, "evaluator": evaluator}
    headers = {role: ({} if user is None else {"Authorization": f"Token {Token.objects.create(user=user).key}"})
               for role, user in callers.items()}
    headers["bad token"] = {"Authorization": "Token " + "f" * 40}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    failures: list[str] = []
    statuses: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12

    def check(operation, role: str, auth: dict) -> None:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(), real=st.booleans())
        def run(case, real):
            if real and case.path_parameters is not None:
                if "study_id" in case.path_parameters:
                    case.path_parameters["study_id"] = study.pk
                if "token" in case.path_parameters:
                    lease = services.assignment_next(study=study, annotator=annotators[0])
                    if lease is not None:
                        case.path_parameters["token"] = lease.token
            try:
                response = case.call_and_validate(base_url=live_server.url, headers=auth, checks=[not_a_server_error])
                statuses[operation.label, response.status_code] += 1
            except Exception as exc:  # noqa: BLE001 - collected, all reported at the end
                failures.append(f"{operation.label} as {role}: {exc}"[:600])

        run()

    for operation in operations:
        for role, auth in headers.items():
            check(operation, role, auth)
    # every operation was reached past its access checks, so its own input handling was tried too
    reached = {label for (label, code), _ in statuses.items() if code not in (401, 403, 404)}
    assert reached == {op.label for op in operations}, sorted(statuses.items())
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:10])
    print(f"schemathesis: {sum(statuses.values())} requests in {time.monotonic() - started:.1f} s")  # a figure
