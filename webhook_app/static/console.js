// The operator console's only script, no dependencies.
// An element with data-poll="URL" is refreshed from that URL every data-every ms: the
// server renders the fragment (escaped), so it is inserted as it comes. A 401 means the
// session ended: go to the sign-in page. Forms with data-confirm ask before submitting.
"use strict";

for (const element of document.querySelectorAll("[data-poll]")) {
  let last = null;
  const refresh = async () => {
    if (document.hidden) return;
    try {
      const answer = await fetch(element.dataset.poll, {
        credentials: "same-origin",
        headers: { "X-Console-Poll": "1" },
      });
      if (answer.status === 401) {
        window.location.assign("/console/login");
        return;
      }
      if (!answer.ok) return;
      const html = await answer.text();
      if (html !== last) {
        if (last !== null) element.innerHTML = html;
        last = html;
      }
    } catch (error) {
      // Offline for a moment: the next tick tries again.
    }
  };
  refresh();
  window.setInterval(refresh, Number(element.dataset.every) || 5000);
}

for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}
