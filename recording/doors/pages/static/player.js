// The leg's player: the waveform seeks the audio where it is clicked, and a line follows the
// playing position. Served by the service itself (the Content-Security-Policy allows no inline
// script and nothing from another host).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var audio = document.getElementById("player");
  var wave = document.getElementById("wave");
  var head = document.getElementById("playhead");
  if (!audio || !wave || !head) {
    return;
  }
  function place() {
    var length = audio.duration;
    var at = isFinite(length) && length > 0 ? audio.currentTime / length : 0;
    head.style.left = (Math.min(1, Math.max(0, at)) * 100) + "%";
  }
  audio.addEventListener("timeupdate", place);
  audio.addEventListener("seeked", place);
  audio.addEventListener("loadedmetadata", place);
  wave.addEventListener("click", function (event) {
    var box = wave.getBoundingClientRect();
    var fraction = (event.clientX - box.left) / box.width;
    function seek() {
      audio.currentTime = fraction * audio.duration;
      place();
    }
    if (isFinite(audio.duration) && audio.duration > 0) {
      seek();
    } else {
      audio.addEventListener("loadedmetadata", seek, { once: true });
      audio.load();
    }
  });
});
