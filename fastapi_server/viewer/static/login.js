/* The login page: show the failure note after a rejected key. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  if (new URLSearchParams(window.location.search).has("failed")) {
    document.getElementById("failed").hidden = false;
  }
});
