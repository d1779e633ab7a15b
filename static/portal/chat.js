/* Knowledge Portal chat: Enter sends, answers stream in (fetch + ReadableStream reading server-sent events).
 * Without this script the form still works: the server answers in full and shows the page again. */
(function () {
  "use strict";
  const form = document.getElementById("ask-form");
  if (!form) return;
  const textarea = form.querySelector("textarea");
  const button = form.querySelector("button[type=submit]");

  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (textarea.value.trim()) form.requestSubmit();
    }
  });

  // A citation moves the focus to its source, so keyboard and screen-reader users land there too.
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a.cite");
    if (!link) return;
    const target = document.getElementById(link.hash.slice(1));
    if (!target) return;
    event.preventDefault();
    history.replaceState(null, "", link.hash);
    target.scrollIntoView({ block: "center", behavior: "smooth" });
    target.focus({ preventScroll: true });
    target.classList.remove("flash");
    void target.offsetWidth; // restart the animation
    target.classList.add("flash");
  });

  if (!("stream" in form.dataset) || !window.fetch || !window.ReadableStream || !window.TextDecoder) return;

  const messages = document.getElementById("messages");
  const live = document.createElement("p");
  live.className = "visually-hidden";
  live.setAttribute("aria-live", "polite");
  form.appendChild(live);
  let busy = false;

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const question = textarea.value.trim();
    if (busy || !question) return;
    ask(question);
  });

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  function pendingMessage(question) {
    const article = element("article", "message pending");
    const asked = element("div", "bubble question");
    asked.append(element("span", "who", form.dataset.textYou), element("p", "", question));
    const answer = element("div", "bubble answer");
    const status = element("p", "thinking");
    const label = element("span", "", form.dataset.textThinking);
    const elapsed = element("span", "elapsed", "0 s");
    status.append(element("span", "dots"), label, elapsed);
    const text = element("div", "answer-text streaming");
    const paragraph = element("p");
    text.append(paragraph);
    answer.append(status, text);
    article.append(asked, answer);
    // How long the answer is taking, so a slow model reads as working rather than stuck.
    const started = Date.now();
    const timer = window.setInterval(() => {
      elapsed.textContent = Math.round((Date.now() - started) / 1000) + " s";
    }, 1000);
    return { article, status, label, timer, text: paragraph, answer };
  }

  function writing(pending) {
    if (pending.writing) return;
    pending.writing = true;
    pending.label.textContent = form.dataset.textWriting || form.dataset.textThinking;
  }

  function parse(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return null;
    try {
      return { name, data: JSON.parse(data.join("\n")) };
    } catch (error) {
      return null;
    }
  }

  function finish(pending, payload) {
    const template = document.createElement("template");
    template.innerHTML = payload.html.trim();
    const node = template.content.firstElementChild;
    pending.article.replaceWith(node);
    if (window.htmx) window.htmx.process(node);
    if (payload.title) {
      const heading = document.getElementById("conversation-title");
      if (heading) heading.textContent = payload.title;
      const current = document.querySelector("#conversation-list a[aria-current=page] .conv-title");
      if (current) current.textContent = payload.title;
    }
    live.textContent = form.dataset.textDone || "";
  }

  function fail(pending, text, question) {
    pending.status.remove();
    pending.text.parentElement.remove();
    const alert = element("p", "error", text || form.dataset.textError);
    alert.setAttribute("role", "alert");
    pending.answer.append(alert);
    pending.article.classList.add("failed");
    if (!textarea.value) textarea.value = question;
  }

  async function ask(question) {
    busy = true;
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    const data = new FormData(form);
    const pending = pendingMessage(question);
    messages.append(pending.article);
    pending.article.scrollIntoView({ block: "end", behavior: "smooth" });
    textarea.value = "";
    live.textContent = form.dataset.textThinking;
    let ended = false;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: data,
        headers: { Accept: "text/event-stream" },
        credentials: "same-origin",
      });
      if (!response.ok || !response.body) {
        let text = form.dataset.textError;
        try {
          text = (await response.json()).error || text;
        } catch (error) { /* not JSON: keep the generic text */ }
        fail(pending, text, question);
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parse(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!event) continue;
          if (event.name === "token") {
            writing(pending);
            pending.text.textContent += event.data.text;
          } else if (event.name === "done") {
            ended = true;
            finish(pending, event.data);
          } else if (event.name === "error") {
            ended = true;
            fail(pending, event.data.message, question);
          }
        }
      }
      if (!ended) fail(pending, form.dataset.textError, question);
    } catch (error) {
      fail(pending, form.dataset.textError, question);
    } finally {
      window.clearInterval(pending.timer);
      busy = false;
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  }

  if ("autosubmit" in form.dataset && textarea.value.trim()) ask(textarea.value.trim());
})();
