// Sign-in page (docs/api.md, "The login page"): fetch the login CSRF token (which also sets the
// double-submit cookie), post the credentials with it, then go to the worklist.

const form = document.getElementById("login-form");
const user = document.getElementById("username");
const pass = document.getElementById("password");
const submit = document.getElementById("login-submit");
const message = document.getElementById("login-message");

function show(text, kind = "error") {
  message.textContent = text;
  message.dataset.kind = kind;
  message.hidden = !text;
}

async function detail(res) {
  try {
    const body = await res.json();
    if (body && typeof body.detail === "string") return body.detail;
  } catch (_) { /* not JSON */ }
  return `the server answered ${res.status}`;
}

async function loginToken() {
  const res = await fetch("/api/auth/login-token", { credentials: "same-origin" });
  if (!res.ok) throw new Error(await detail(res));
  const body = await res.json();
  return body.csrf_token;
}

function minutes(seconds) {
  const m = Math.ceil(seconds / 60);
  return m <= 1 ? "a minute" : `${m} minutes`;
}

const params = new URLSearchParams(window.location.search);
if (params.has("expired")) show("Your session ended. Please sign in again.", "info");
if (params.has("signedout")) show("You are signed out.", "info");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!user.value.trim() || !pass.value) {
    show("Enter your user name and password.");
    (user.value.trim() ? pass : user).focus();
    return;
  }
  submit.disabled = true;
  submit.textContent = "Signing in...";
  show("");
  try {
    const token = await loginToken();
    const res = await fetch("/api/auth/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": token },
      body: JSON.stringify({ username: user.value.trim(), password: pass.value }),
    });
    if (res.ok) {
      pass.value = "";
      // A deep link (#/study/<key>) that led here survives the redirect: open it after sign-in.
      const hash = /^#\/[\w/-]*$/.test(window.location.hash) ? window.location.hash : "";
      window.location.assign(`/${hash}`);
      return;
    }
    if (res.status === 429) {
      const wait = Number(res.headers.get("Retry-After") || "0");
      show(`Too many failed sign-ins. Try again in ${minutes(wait || 60)}.`);
    } else if (res.status === 401) {
      show("Wrong user name or password.");
      pass.select();
    } else if (res.status === 403) {
      show("The sign-in form expired. Please try again.");
    } else {
      show(`Sign-in failed: ${await detail(res)}`);
    }
  } catch (err) {
    show(`The server cannot be reached (${err.message}). Check the connection and try again.`);
  }
  submit.disabled = false;
  submit.textContent = "Sign in";
});
