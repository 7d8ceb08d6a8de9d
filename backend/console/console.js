// The Picket fleet console: one page, its views chosen by the URL fragment (#/overview, ...).
// All data comes from the JSON API of the same server. Text from devices is only ever put in
// the page with textContent or as attribute values set by setAttribute: never parsed as HTML.

import { view, el, show } from "./dom.js";
import { session, ApiError, api, errorBox } from "./api.js";
import { alertsView, alertView } from "./alerts.js";
import { loginView, overviewView, deviceView, policiesView, auditView } from "./pages.js";

function renderHeader() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const logout = document.getElementById("logout");
  nav.hidden = session.me === null;
  logout.hidden = session.me === null;
  who.textContent = session.me ? `${session.me.user} (${session.me.role})` : "";
  for (const a of nav.querySelectorAll("a")) {
    const role = a.getAttribute("data-role");
    a.hidden = role !== null && !(session.me && session.me.role === role);
    const page = a.getAttribute("data-page");
    a.classList.toggle("current", location.hash.startsWith(`#/${page}`));
  }
}

async function logout() {
  try {
    await api("/api/logout", { method: "POST", noRedirect: true });
  } catch (_) {
    // The session is gone either way.
  }
  session.me = null;
  location.hash = "#/login";
}

const PAGES = {
  login: loginView,
  overview: overviewView,
  alerts: (id) => (id ? alertView(id) : alertsView()),
  devices: deviceView,
  policies: policiesView,
  audit: auditView,
};

// Each navigation is numbered: a page whose data arrives after the user went elsewhere is
// dropped (and what it opened closed), never shown over the newer one.
let generation = 0;

async function route() {
  for (const close of view.cleanup) close();
  const mine = ++generation;
  const cleanups = [];
  view.cleanup = cleanups;
  const hash = location.hash || "#/overview";
  const parts = hash.split("?")[0].replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  let content;
  try {
    if (parts[0] !== "login" && session.me === null) {
      session.me = await api("/api/me", { noRedirect: true });
    }
    const page = PAGES[parts[0]];
    content = page ? await page(parts[1]) : [el("h1", {}, "Not found"), el("p", {}, "No such page.")];
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      // api() (or this) sends the user to the login page, and back here after it.
      if (mine === generation && !hash.startsWith("#/login")) {
        sessionStorage.setItem("picket-after-login", hash);
        location.hash = "#/login";
      }
      return;
    }
    content = errorBox(e);
  }
  if (mine !== generation) {
    for (const close of cleanups) close();
    return;
  }
  renderHeader();
  show(content);
  // Which page is on screen (for style sheets and tests): set with the content, never before.
  document.getElementById("main").setAttribute("data-view", hash);
  const focus = document.querySelector("main [autofocus]");
  if (focus) focus.focus();
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", logout);
  route();
});

