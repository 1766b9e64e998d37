// The login page: shows a failed attempt, and logs in at once from a link with #token=...
// (the fragment never reaches the server or its logs; it is removed from the address bar).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  const input = document.getElementById("token");
  if (new URLSearchParams(location.search).has("failed")) {
    document.getElementById("failed").hidden = false;
  }
  const match = /^#token=(.+)$/.exec(location.hash);
  if (match) {
    history.replaceState(null, "", "/login");
    input.value = decodeURIComponent(match[1]);
    form.submit();
  }
});
