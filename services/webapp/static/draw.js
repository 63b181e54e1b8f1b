// The drawing pad: records strokes (pointer events: mouse, pen, touch) and sends them as
// JSON in the form's "strokes" field. The server turns them into the model's input
// (services/webapp/inputs.py), so nothing here decides what the model sees.
(function () {
  "use strict";
  var canvas = document.getElementById("pad");
  var form = document.getElementById("draw-form");
  if (!canvas || !form) { return; }
  var ctx = canvas.getContext("2d");
  // After a prediction the page comes back with the drawing it was made from.
  var strokes = canvas.dataset.strokes ? JSON.parse(canvas.dataset.strokes) : [];
  var current = null;

  function setup() {
    // Draw in device pixels for a crisp line at any size the CSS gives the canvas.
    var rect = canvas.getBoundingClientRect();
    var ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(rect.width * ratio);
    canvas.height = Math.round(rect.height * ratio);
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = Math.max(8, rect.width / 16);
    ctx.strokeStyle = "#111";
    redraw();
  }

  function point(event) {
    var rect = canvas.getBoundingClientRect();
    return [Math.round(event.clientX - rect.left), Math.round(event.clientY - rect.top)];
  }

  function redraw() {
    var rect = canvas.getBoundingClientRect();
    ctx.clearRect(0, 0, rect.width, rect.height);
    strokes.forEach(function (s) {
      ctx.beginPath();
      ctx.moveTo(s[0][0], s[0][1]);
      for (var i = 1; i < s.length; i++) { ctx.lineTo(s[i][0], s[i][1]); }
      if (s.length === 1) { ctx.lineTo(s[0][0] + 0.1, s[0][1]); }
      ctx.stroke();
    });
  }

  canvas.addEventListener("pointerdown", function (e) {
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    current = [point(e)];
    strokes.push(current);
    redraw();
  });
  canvas.addEventListener("pointermove", function (e) {
    if (!current) { return; }
    var p = point(e);
    var last = current[current.length - 1];
    if (p[0] !== last[0] || p[1] !== last[1]) { current.push(p); redraw(); }
  });
  function end() { current = null; }
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  document.getElementById("clear").addEventListener("click", function () {
    strokes = [];
    redraw();
  });
  form.addEventListener("submit", function (e) {
    if (!strokes.length) {
      e.preventDefault();
      canvas.classList.add("empty");
      return;
    }
    document.getElementById("strokes").value = JSON.stringify(strokes);
  });
  window.addEventListener("resize", setup);
  setup();
})();
