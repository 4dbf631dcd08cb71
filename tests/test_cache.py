"""Sessions through the Redis cache (a real Redis), with one client kept per connection pool."""
import pytest
from django.core.cache import caches
from django.test import override_settings
from django.urls import reverse

REDIS = {"default": {"BACKEND": "evalsite.cache.RedisCache", "LOCATION": "redis://127.0.0.1:6379/11",
                     "KEY_PREFIX": "evalsite-test"}}


@override_settings(CACHES=REDIS)
def test_the_redis_cache_reuses_its_client_and_round_trips_values():
    cache = caches["default"]
    cache.set("answer", {"votes": 42}, 30)
    assert cache.get("answer") == {"votes": 42}
    assert cache._cache.get_client() is cache._cache.get_client(write=True)
    cache.delete("answer")
    assert cache.get("answer") is None


@pytest.mark.django_db
@override_settings(CACHES=REDIS)
def test_a_session_kept_in_redis_logs_the_annotator_in(client, study_factory, annotators):
    study = study_factory()
    client.force_login(annotators[0])
    caches["default"].clear()  # a cache miss reads the session from the database, then caches it
    assert client.get(reverse("annotation:annotate", args=[study.pk])).status_code == 200
    assert client.get(reverse("annotation:annotate", args=[study.pk])).status_code == 200
