// The image lightbox of image tasks: a click, Enter or Space on a task image (.task-image)
// opens its full-size image (data-full) in a modal <dialog>.  Keys while it is open: + and -
// zoom, 0 resets, the arrow keys pan when zoomed, Escape closes it and gives the focus back
// to the image; the mouse wheel zooms too, and a zoomed image follows the pointer while it is
// dragged (mouse, pen or finger: pointer events).  Its keys never reach the vote shortcuts
// (annotate.js): this listener runs first (window, capture phase) and stops them.
(function () {
  "use strict";
  var MIN = 1, MAX = 8, STEP = 1.25, PAN = 40;
  var dialog = null, img = null, opener = null;
  var zoom = 1, dx = 0, dy = 0;
  var drag = null;  // {id, x, y, dx, dy}: the pointer that pans, where it and the image started

  function build() {
    dialog = document.createElement("dialog");
    dialog.className = "lightbox";
    dialog.id = "lightbox";
    dialog.setAttribute("aria-label", "Image, full size");
    var bar = document.createElement("p");
    bar.className = "lightbox-help muted";
    bar.textContent = "+ / − zoom · 0 resets · arrows or drag move · Esc closes";
    var close = document.createElement("button");
    close.type = "button";
    close.className = "small lightbox-close";
    close.textContent = "Close";
    close.addEventListener("click", function () { hide(); });
    var frame = document.createElement("div");
    frame.className = "lightbox-frame";
    img = document.createElement("img");
    img.id = "lightbox-image";
    img.alt = "";
    img.draggable = false;  // the browser's own drag of an image would take the pointer
    img.addEventListener("pointerdown", startDrag);
    img.addEventListener("pointermove", moveDrag);
    img.addEventListener("pointerup", endDrag);
    img.addEventListener("pointercancel", endDrag);
    img.addEventListener("lostpointercapture", endDrag);
    frame.appendChild(img);
    dialog.appendChild(bar);
    dialog.appendChild(close);
    dialog.appendChild(frame);
    dialog.addEventListener("wheel", function (event) {
      event.preventDefault();
      setZoom(event.deltaY < 0 ? zoom * STEP : zoom / STEP);
    }, { passive: false });
    dialog.addEventListener("cancel", function (event) {  // Escape as the browser sees it
      event.preventDefault();
      hide();
    });
    dialog.addEventListener("click", function (event) {
      if (event.target === dialog) hide();  // a click on the backdrop
    });
    document.body.appendChild(dialog);
  }

  function apply() {
    img.style.transform = "translate(" + dx + "px, " + dy + "px) scale(" + zoom + ")";
    dialog.setAttribute("data-zoom", String(Math.round(zoom * 100) / 100));
  }

  function startDrag(event) {
    if (zoom <= 1 || drag || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    drag = { id: event.pointerId, x: event.clientX, y: event.clientY, dx: dx, dy: dy };
    img.setPointerCapture(event.pointerId);  // moves outside the image still pan it
    dialog.classList.add("lightbox-dragging");
  }

  function moveDrag(event) {
    if (!drag || event.pointerId !== drag.id || zoom <= 1) return;  // "0" may reset mid-drag
    dx = drag.dx + event.clientX - drag.x;
    dy = drag.dy + event.clientY - drag.y;
    apply();
  }

  function endDrag(event) {
    if (!drag || event.pointerId !== drag.id) return;
    drag = null;
    dialog.classList.remove("lightbox-dragging");
    if (img.hasPointerCapture(event.pointerId)) img.releasePointerCapture(event.pointerId);
  }

  function setZoom(value) {
    zoom = Math.min(MAX, Math.max(MIN, value));
    if (zoom === MIN) { dx = 0; dy = 0; }
    apply();
  }

  function show(thumb) {
    if (!dialog) build();
    opener = thumb;
    zoom = 1; dx = 0; dy = 0; drag = null;
    dialog.classList.remove("lightbox-dragging");
    img.src = thumb.getAttribute("data-full") || thumb.src;
    img.alt = (thumb.getAttribute("alt") || "Image") + ", full size";
    apply();
    dialog.showModal();
    dialog.focus();
  }

  function hide() {
    if (!dialog || !dialog.open) return;
    dialog.close();
    if (opener && opener.isConnected) opener.focus();
    opener = null;
  }

  function isOpen() { return !!(dialog && dialog.open); }
  window.evalsiteLightboxOpen = isOpen;

  window.addEventListener("keydown", function (event) {
    if (isOpen()) {
      var key = event.key, handled = true;
      if (key === "Escape") hide();
      else if (key === "+" || key === "=") setZoom(zoom * STEP);
      else if (key === "-" || key === "_") setZoom(zoom / STEP);
      else if (key === "0") setZoom(1);
      else if (zoom > 1 && key === "ArrowLeft") { dx += PAN; apply(); }
      else if (zoom > 1 && key === "ArrowRight") { dx -= PAN; apply(); }
      else if (zoom > 1 && key === "ArrowUp") { dy += PAN; apply(); }
      else if (zoom > 1 && key === "ArrowDown") { dy -= PAN; apply(); }
      else handled = key !== "Tab";  // Tab may reach the Close button; nothing else leaks out
      if (handled) event.preventDefault();
      event.stopImmediatePropagation();
      return;
    }
    var target = event.target;
    if (target && target.classList && target.classList.contains("task-image") &&
        (event.key === "Enter" || event.key === " ") && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      event.stopImmediatePropagation();  // Enter here opens the image; it does not submit ratings
      show(target);
    }
  }, true);

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target && target.classList && target.classList.contains("task-image")) {
      event.preventDefault();
      show(target);
    }
  });
})();
