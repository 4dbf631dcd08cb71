// Keyboard-first judging: 1 = A better, 2 = B better, 3 = tie, 4 = both bad, S = skip with a
// reason, U = undo the last vote (the legend under the buttons lists them).  Also measures
// active time on the task (visible and not idle), so judgments carry it, and collapses a long
// prompt behind a "Show all" button.
(function () {
  "use strict";
  var shownAt = performance.now();
  var hiddenSince = null;
  var hiddenTotal = 0;
  // Idle: no key, click, pointer move, scroll or touch for longer than the task page's
  // data-idle-seconds (EVALSITE_IDLE_SECONDS); the time beyond it is not active time.
  var lastActive = performance.now();
  var idleTotal = 0;

  function idleLimit() {
    var task = document.getElementById("task");
    var seconds = task ? parseFloat(task.getAttribute("data-idle-seconds")) : NaN;
    return (isNaN(seconds) ? 30 : seconds) * 1000;
  }

  function activity() {
    var now = performance.now();
    if (!document.hidden) {
      var gap = now - lastActive;
      var limit = idleLimit();
      if (gap > limit) idleTotal += gap - limit;
    }
    lastActive = now;
  }
  ["keydown", "pointerdown", "pointermove", "wheel", "scroll", "touchstart"].forEach(function (name) {
    document.addEventListener(name, activity, {capture: true, passive: true});
  });

  function resetTimer() {
    shownAt = performance.now();
    hiddenTotal = 0;
    hiddenSince = document.hidden ? performance.now() : null;
    lastActive = shownAt;
    idleTotal = 0;
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      activity();  // close the stretch before the tab was hidden; hidden time is counted apart
      hiddenSince = performance.now();
    } else if (hiddenSince !== null) {
      hiddenTotal += performance.now() - hiddenSince;
      hiddenSince = null;
      lastActive = performance.now();
    }
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.id !== "task-form") return;
    activity();
    var field = form.querySelector("input[name=active_ms]");
    if (field) field.value = String(Math.max(0, Math.round(performance.now() - shownAt - hiddenTotal - idleTotal)));
  }, true);

  // A long prompt shows its first lines and a "Show all" button; a short one shows whole.
  // Collapsed here rather than by the server, so that without JavaScript the prompt is whole.
  function setupPrompt() {
    var text = document.getElementById("prompt-text");
    var toggle = document.getElementById("prompt-toggle");
    if (!text || !toggle) return;
    text.classList.add("collapsed");
    if (text.scrollHeight <= text.clientHeight + 2) {
      text.classList.remove("collapsed");
      toggle.hidden = true;
      return;
    }
    setExpanded(text, toggle, false);
    toggle.hidden = false;
  }

  function setExpanded(text, toggle, expanded) {
    text.classList.toggle("collapsed", !expanded);
    toggle.setAttribute("aria-expanded", expanded ? "true" : "false");
    toggle.textContent = expanded ? "Show less" : "Show all";
  }

  document.addEventListener("click", function (event) {
    var toggle = event.target.closest ? event.target.closest("#prompt-toggle") : null;
    if (!toggle) return;
    var text = document.getElementById("prompt-text");
    if (text) setExpanded(text, toggle, text.classList.contains("collapsed"));
  });

  setupPrompt();
  document.addEventListener("htmx:afterSwap", resetTimer);
  // After settling, not swapping: while settling htmx gives same-id elements their old
  // attributes back for a moment, then the new ones, which would undo the collapse.
  document.addEventListener("htmx:afterSettle", setupPrompt);

  // Errors htmx does not swap (403 excluded, 404 unknown task, 5xx) and lost connections:
  // say so on the task itself, so no vote silently disappears.
  function showProblem(text) {
    var task = document.getElementById("task");
    if (!task) return;
    var box = document.getElementById("task-problem");
    if (!box) {
      box = document.createElement("p");
      box.id = "task-problem";
      box.className = "error-box";
      box.setAttribute("role", "alert");
      task.insertBefore(box, task.firstChild);
    }
    box.textContent = text;
  }
  function problemText(status) {
    var reason = {403: "you may not judge in this study any more", 404: "this task is not yours or no longer exists"}[status] || "the server failed";
    return "Not recorded (" + status + "): " + reason + ". Reload the page for your current task.";
  }
  document.addEventListener("htmx:responseError", function (event) {
    showProblem(problemText(event.detail.xhr.status));
  });
  document.addEventListener("htmx:sendError", function () {
    showProblem("Not recorded: the connection failed. Check your network and press the key again.");
  });

  // Likert tasks: a digit rates the current criterion (the one holding the focus, else the
  // first unrated) and moves the focus to the next; 0 or n is "not applicable" where offered
  // (on a 10-point scale 0 is 10); Enter submits.  Tag letters toggle tags on any task.
  function currentCriterion(form) {
    var active = document.activeElement;
    var holder = active && active.closest ? active.closest(".criterion") : null;
    if (holder && form.contains(holder)) return holder;
    var all = form.querySelectorAll(".criterion");
    for (var i = 0; i < all.length; i++) {
      if (!all[i].querySelector("input:checked")) return all[i];
    }
    return null;
  }

  function rate(form, key) {
    var criterion = currentCriterion(form);
    if (!criterion) return false;
    var scale = parseInt(criterion.getAttribute("data-scale"), 10);
    var value = null;
    if (/^[1-9]$/.test(key) && parseInt(key, 10) <= scale) value = key;
    else if (key === "0" && scale === 10) value = "10";
    else if (key === "0" || key === "n" || key === "N") value = "na";
    if (value === null) return false;
    var input = criterion.querySelector('input[value="' + value + '"]');
    if (!input) return false;
    input.checked = true;
    var all = Array.prototype.slice.call(form.querySelectorAll(".criterion"));
    var next = all[all.indexOf(criterion) + 1];
    var focusTarget = next ? (next.querySelector("input:checked") || next.querySelector("input")) : form.querySelector("#likert-submit");
    if (focusTarget) focusTarget.focus();
    return true;
  }

  function toggleTag(form, key) {
    var box = form.querySelector('input[name=tag][data-letter="' + key.toLowerCase() + '"]');
    if (!box) return false;
    box.checked = !box.checked;
    return true;
  }

  // Skip: S opens the reasons (a digit picks one, "Other" moves to the words box), Enter
  // skips, Esc goes back to the task.  Undo: U, while the server's window is open.
  function openSkip(panel) {
    panel.open = true;
    var checked = panel.querySelector("input[name=reason]:checked") || panel.querySelector("input[name=reason]");
    if (checked) checked.focus();
  }

  function closeSkip(panel) {
    panel.open = false;
    var summary = panel.querySelector("summary");
    if (summary) summary.focus();
  }

  function skipKey(panel, event) {
    var form = panel.querySelector("#skip-form");
    if (event.key === "Escape") {
      closeSkip(panel);
      return true;
    }
    if (event.key === "Enter") {
      if (form.requestSubmit) form.requestSubmit(); else form.querySelector("#skip-submit").click();
      return true;
    }
    var radio = form.querySelector('input[name=reason][data-key="' + event.key + '"]');
    if (!radio) return false;
    radio.checked = true;
    radio.focus();
    if (radio.value === "other") {
      var note = form.querySelector("#skip-note");
      if (note) note.focus();
    }
    return true;
  }

  function setupUndo() {
    var undo = document.getElementById("undo-form");
    if (!undo || undo.getAttribute("data-timer")) return;
    undo.setAttribute("data-timer", "1");
    var seconds = parseInt(undo.getAttribute("data-undo-seconds"), 10) || 0;
    setTimeout(function () {
      if (undo.parentNode) undo.parentNode.removeChild(undo);
    }, seconds * 1000);
  }
  setupUndo();
  document.addEventListener("htmx:afterSettle", setupUndo);

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    // the image lightbox (lightbox.js) keeps its keys: nothing votes while it is open
    if (window.evalsiteLightboxOpen && window.evalsiteLightboxOpen()) return;
    var target = event.target;
    var typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type !== "radio" && target.type !== "checkbox"));
    var panel = document.getElementById("skip-panel");
    if (panel && panel.open && target && panel.contains(target) && !(typing && event.key !== "Escape")) {
      if (skipKey(panel, event)) event.preventDefault();
      return;
    }
    if (typing) {
      if (event.key === "Escape") target.blur();
      return;
    }
    if (event.key === "u" || event.key === "U") {
      var undoButton = document.getElementById("undo-button");
      if (undoButton && !undoButton.disabled) {
        event.preventDefault();
        undoButton.click();
      }
      return;
    }
    if ((event.key === "s" || event.key === "S") && panel) {
      event.preventDefault();
      openSkip(panel);
      return;
    }
    var form = document.getElementById("task-form");
    if (!form) return;
    if (form.querySelector(".criterion")) {
      if (event.key === "Enter") {
        var submit = form.querySelector("#likert-submit");
        if (submit && !submit.disabled) {
          event.preventDefault();
          submit.click();
        }
        return;
      }
      if (rate(form, event.key)) {
        event.preventDefault();
        return;
      }
    }
    if (event.key.length === 1 && /[a-z]/i.test(event.key) && toggleTag(form, event.key)) {
      event.preventDefault();
      return;
    }
    var button = form.querySelector('button[data-key="' + event.key + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });
  // The next task, fetched ahead: the page holds it in <template id="task-ahead">.  A vote
  // puts it on screen at once and travels in the background; its answer brings the task
  // after it (and the undo bar and progress), and the task on screen stays as it is, focus
  // and typing included.  A refused vote, or an answer whose task is not the one shown (the
  // task ahead expired meanwhile), puts the server's answer on screen instead, as without
  // fetching ahead.  A vote cast before the previous answer is back waits for it.
  var voting = null;

  function tokenOf(task) {
    return task ? task.getAttribute("data-token") : null;
  }

  function showTask(fresh) {
    var task = document.getElementById("task");
    if (!task) return;
    task.replaceWith(fresh);
    if (window.htmx) window.htmx.process(fresh);
    resetTimer();
    setupPrompt();
    setupUndo();
  }

  function takePart(task, fresh, selector, where) {
    var old = task.querySelector(selector);
    var part = fresh.querySelector(selector);
    if (old) old.remove();
    if (!part) return;
    part = document.importNode(part, true);
    if (where === "first") task.insertBefore(part, task.firstChild); else task.appendChild(part);
    if (window.htmx) window.htmx.process(part);
  }

  // The task the vote was cast on goes back on screen, buttons usable again, with the problem.
  function restore(before, text) {
    var task = document.getElementById("task");
    if (task && before && task !== before) task.replaceWith(before);
    var buttons = before ? before.querySelectorAll("button") : [];
    for (var i = 0; i < buttons.length; i++) buttons[i].disabled = false;
    showProblem(text);
  }

  function applyAnswer(status, html, before) {
    var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("task");
    var task = document.getElementById("task");
    if (!fresh || !task) {  // 403, 404, a server error: no task in the answer
      restore(before, problemText(status));
      return;
    }
    fresh = document.importNode(fresh, true);
    var same = status === 200 && tokenOf(fresh) && tokenOf(fresh) === tokenOf(task);
    if (!same && fresh.hasAttribute("data-lean")) {  // cannot happen: a lean answer names the task shown
      window.location.reload();
      return;
    }
    if (!same) {
      showTask(fresh);
      return;
    }
    var progress = task.querySelector(".progress-line");
    var freshProgress = fresh.querySelector(".progress-line");
    if (progress && freshProgress) progress.replaceWith(freshProgress);
    takePart(task, fresh, "#undo-form", "first");
    takePart(task, fresh, "#task-ahead", "last");
    setupUndo();
  }

  function sendVote(action, data) {
    var before = document.getElementById("task");
    var template = document.getElementById("task-ahead");
    var headers = {"HX-Request": "true"};
    if (template && template.content.firstElementChild) {
      showTask(document.importNode(template.content.firstElementChild, true));
      // the server answers without a copy of the task now on screen when it is the one it serves
      headers["X-Evalsite-Shown"] = tokenOf(document.getElementById("task")) || "";
    }
    var shown = document.getElementById("task");
    if (shown) shown.setAttribute("data-sending", "");  // until the answer is in
    return fetch(action, {method: "POST", body: data, credentials: "same-origin", headers: headers})
      .then(function (response) {
        return response.text().then(function (html) { applyAnswer(response.status, html, before); });
      })
      .catch(function () {
        restore(before, "Not recorded: the connection failed. Check your network and press the key again.");
      })
      .then(function () {
        var task = document.getElementById("task");
        if (task) task.removeAttribute("data-sending");
      });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.id !== "task-form" || !window.fetch || !window.DOMParser) return;
    if (!document.getElementById("task-ahead") && !voting) return;  // htmx's own round trip
    event.preventDefault();
    event.stopPropagation();
    var data = new FormData(form);
    var submitter = event.submitter;
    if (submitter && submitter.name) data.append(submitter.name, submitter.value);
    var action = form.getAttribute("action");
    var buttons = form.querySelectorAll("button");
    for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
    var mine = (voting || Promise.resolve()).then(function () { return sendVote(action, data); });
    voting = mine;
    mine.then(function () { if (voting === mine) voting = null; });
  }, true);  // before htmx's own handler on the form, which this replaces
})();
