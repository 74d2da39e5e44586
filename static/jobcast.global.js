// jobcast.global.js — jobcast.js for a plain <script> (no modules, no build step).
//
//   <script src="/static/jobcast.global.js"></script>
//   <script>
//     jobcastReady.then(({ watch }) => watch('8ae7f267', { token, onProgress }));
//   </script>
//
// jobcast.js is an ES module; a classic script cannot `import` it, but it can
// load it with dynamic import(). This file does that, from the folder it was
// itself loaded from, and publishes the module as `window.jobcast` (once it is
// loaded) and `window.jobcastReady` (a promise of it), then dispatches a
// `jobcast:ready` event. One copy of the client, whichever way it is loaded.
(function () {
  'use strict';
  var here = document.currentScript && document.currentScript.src;
  var url = new URL('jobcast.js', here || location.href).href;
  window.jobcastReady = import(url).then(function (mod) {
    window.jobcast = mod;
    window.dispatchEvent(new CustomEvent('jobcast:ready', { detail: mod }));
    return mod;
  });
})();
