// The slide page: the slide and its overlays in OpenSeadragon, with their controls and a scale bar.
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("config").textContent);
  const base = "/slide/" + cfg.index + "/tiles/";
  const viewer = OpenSeadragon({
    id: "osd", prefixUrl: "/static/openseadragon/images/", showNavigator: false, maxZoomPixelRatio: 4,
    crossOriginPolicy: false, animationTime: 0.4,
    drawer: "canvas", immediateRender: true,  // immediateRender: the level in view first, not coarse ones before it  // the 2D canvas: WebGL is slow where the browser has no GPU (software rendering)
  });
  window.slidefuseViewer = viewer;  // for the browser tests

  function source(layer, fmt, query) {
    return {
      width: cfg.width, height: cfg.height, tileSize: 256, tileOverlap: 0,
      getTileUrl: function (level, x, y) { return base + layer + "/" + level + "/" + x + "_" + y + "." + fmt + (query || ""); },
    };
  }
  const layers = {};  // name -> TiledImage
  const ORDER = ["slide", "mask", "probs", "qc"];  // bottom to top
  function restack() {
    let k = 0;
    ORDER.forEach(function (name) {
      if (layers[name]) { viewer.world.setItemIndex(layers[name], k); k += 1; }
    });
  }
  function place(name, tileSource, opacity) {
    if (layers[name]) { viewer.world.removeItem(layers[name]); delete layers[name]; }
    viewer.addTiledImage({
      tileSource: tileSource, x: 0, y: 0, width: 1, opacity: opacity,
      success: function (ev) { layers[name] = ev.item; ev.item.slidefuseLayer = name; restack(); },
    });
  }

  const el = function (id) { return document.getElementById(id); };
  function opacity() { return Number(el("opacity").value) / 100; }
  function shownClasses() {
    return Array.from(document.querySelectorAll(".cls-toggle")).filter(function (c) { return c.checked; })
      .map(function (c) { return c.dataset.class; });
  }
  function drawMask() {
    if (!cfg.mask) { return; }
    if (!el("mask-on").checked) {
      if (layers.mask) { viewer.world.removeItem(layers.mask); delete layers.mask; }
      return;
    }
    const q = "?classes=" + shownClasses().join(",") + "&mode=" + el("mode").value;
    place("mask", source("mask", "png", q), opacity());
  }
  function drawProbs() {
    if (!cfg.probs) { return; }
    if (!el("probs-on").checked) {
      if (layers.probs) { viewer.world.removeItem(layers.probs); delete layers.probs; }
      return;
    }
    place("probs", source("probs" + el("probs-class").value, "png", ""), 0.8);
  }
  function drawQc() {
    if (!cfg.qc) { return; }
    if (!el("qc-on").checked) {
      if (layers.qc) { viewer.world.removeItem(layers.qc); delete layers.qc; }
      return;
    }
    place("qc", { type: "image", url: "/slide/" + cfg.index + "/qc.png", buildPyramid: false }, 0.6);
  }

  if (cfg.slide) {
    viewer.addTiledImage({
      tileSource: source("slide", "jpeg", ""), x: 0, y: 0, width: 1,
      success: function (ev) { layers.slide = ev.item; ev.item.slidefuseLayer = "slide"; restack(); scalebar(); },
    });
  }
  drawMask(); drawProbs(); drawQc();  // requested together with the slide's tiles
  el("mask-on").addEventListener("change", drawMask);
  el("mode").addEventListener("change", drawMask);
  document.querySelectorAll(".cls-toggle").forEach(function (c) { c.addEventListener("change", drawMask); });
  el("opacity").addEventListener("input", function () { if (layers.mask) { layers.mask.setOpacity(opacity()); } });
  if (cfg.probs) { el("probs-on").addEventListener("change", drawProbs); el("probs-class").addEventListener("change", drawProbs); }
  if (cfg.qc) { el("qc-on").addEventListener("change", drawQc); }

  // Scale bar: a round length in µm, at most 160 screen px long.
  function scalebar() {
    const item = layers.slide;
    const box = el("scalebar");
    if (!item || !cfg.mpp) { box.hidden = true; return; }
    const screenPerPx = item.viewportToImageZoom(viewer.viewport.getZoom(true));  // screen px per slide px
    const umPerScreen = cfg.mpp / screenPerPx;
    let um = 160 * umPerScreen;
    const p = Math.pow(10, Math.floor(Math.log10(um)));
    um = [5, 2, 1].map(function (m) { return m * p; }).find(function (v) { return v <= um; }) || p;
    box.hidden = false;
    box.querySelector(".bar").style.width = (um / umPerScreen).toFixed(1) + "px";
    box.querySelector("span").textContent = um >= 1000 ? (um / 1000) + " mm" : um + " µm";
  }
  viewer.addHandler("animation", scalebar);
  viewer.addHandler("open", scalebar);
  viewer.world.addHandler("add-item", scalebar);
})();
