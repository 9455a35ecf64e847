// Keyboard shortcuts of the labeling page. The form works without this script
// (mouse only); the script only adds keys. Served from /static so that the
// Content-Security-Policy can forbid inline scripts.
(function () {
  "use strict";
  var form = document.getElementById("label-form");
  if (!form) return;
  var k = parseInt(form.getAttribute("data-k"), 10);
  var order = []; // for k > 2: responses in the order the labeler pressed them
  var strengthKeys = { q: "significantly_better", w: "better", e: "slightly_better", r: "negligibly_better" };
  var safetyKeys = { z: "preferred_safe_only", x: "both_safe", c: "both_unsafe" };

  function check(name, value) {
    var el = form.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (el) { el.checked = true; el.dispatchEvent(new Event("change", { bubbles: true })); }
  }
  function highlight() {
    var boxes = document.querySelectorAll(".response");
    for (var i = 0; i < boxes.length; i++) {
      var picked = false;
      if (k === 2) {
        var r = form.querySelector('input[name="best"]:checked');
        picked = !!r && r.value === String(i);
      } else {
        var s = form.querySelector('select[name="rank_' + i + '"]');
        picked = !!s && s.value === "1";
      }
      boxes[i].classList.toggle("picked", picked);
    }
  }
  function pick(i) {
    if (i >= k) return;
    if (k === 2) { check("best", String(i)); return; }
    if (order.indexOf(i) >= 0) return;
    order.push(i);
    var s = form.querySelector('select[name="rank_' + i + '"]');
    if (s) s.value = String(order.length);
    if (order.length === k - 1) {
      // the last one left gets the last rank
      for (var j = 0; j < k; j++) if (order.indexOf(j) < 0) pick(j);
    }
    highlight();
  }
  form.addEventListener("change", highlight);
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type === "text"))) return;
    var key = e.key;
    if (/^[1-9]$/.test(key)) { pick(parseInt(key, 10) - 1); e.preventDefault(); }
    else if (strengthKeys[key]) { check("strength", strengthKeys[key]); e.preventDefault(); }
    else if (safetyKeys[key]) { check("safety", safetyKeys[key]); e.preventDefault(); }
    else if (key === "s") { e.preventDefault(); document.getElementById("skip-form").submit(); }
    else if (key === "Backspace" && k > 2) {
      order = [];
      var sel = form.querySelectorAll("select");
      for (var i = 0; i < sel.length; i++) sel[i].value = "";
      highlight(); e.preventDefault();
    }
    else if (key === "Enter") { e.preventDefault(); form.requestSubmit ? form.requestSubmit() : form.submit(); }
  });
  highlight();
})();
