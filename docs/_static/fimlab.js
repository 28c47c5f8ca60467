// Make every figure of the article clickable: a click opens the image at full size.
// (The plot directive and sphinx-gallery write plain <img> tags with no link.)
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".bd-article img").forEach(function (img) {
    if (img.closest("a")) {
      return; // already a link (e.g. a figure with :target:)
    }
    var link = document.createElement("a");
    link.href = img.getAttribute("src");
    link.title = "Open the figure at full size";
    img.parentNode.insertBefore(link, img);
    link.appendChild(img);
  });
});
