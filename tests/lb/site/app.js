// Runs after every subresource has loaded (window "load") and writes what it
// found into #status, so a test reading the DOM knows the browser used the
// stylesheet, the script and every image, whether it got them in a 200 or
// from its cache after a 304.
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) loaded++;
  }
  var colour = getComputedStyle(document.querySelector("h1")).color;
  var css = colour === "rgb(102, 51, 153)" ? "stylesheet applied" : "stylesheet missing";
  var status = document.getElementById("status");
  status.textContent = "script ran; " + css + "; " + loaded + "/" + images.length + " images loaded";
  if (css === "stylesheet applied" && loaded === images.length) status.className = "ok";
});
