/* Knowledge Portal uploads: drag and drop or choose several files; each goes up in its own request
 * with its own progress bar and its own verdict (queued, duplicate, too large, unsupported type).
 * A file named as a document of the collection asks, in its row, "replace (new version) or keep both?" (unless
 * the form's same-name choice already answers). Without this script the form posts all the chosen files at once. */
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;
  const input = form.querySelector("input[type=file]");
  const zone = document.getElementById("dropzone");
  const queue = document.getElementById("upload-queue");
  const collection = form.querySelector("select[name=collection]");
  const sameName = () => (form.querySelector("input[name=same_name]:checked") || { value: "ask" }).value;
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const maxBytes = Number(form.dataset.maxBytes || 0);
  const text = form.dataset;
  const PARALLEL = 2;
  const waiting = [];
  let running = 0;

  function formatSize(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(0) + " KB";
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }

  function row(file) {
    const item = document.createElement("li");
    item.className = "upload-item";
    item.dataset.state = "waiting";
    const name = document.createElement("span");
    name.className = "upload-name";
    name.textContent = file.name;
    const size = document.createElement("span");
    size.className = "upload-size muted";
    size.textContent = formatSize(file.size);
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", file.name);
    const status = document.createElement("span");
    status.className = "upload-status";
    status.textContent = text.textWaiting;
    item.append(name, size, bar, status);
    queue.prepend(item);
    return { item, bar, status };
  }

  function settle(view, state, message, link) {
    view.item.dataset.state = state;
    view.status.textContent = message;
    if (link) {
      const anchor = document.createElement("a");
      anchor.href = link;
      anchor.textContent = text.textOpen;
      view.status.append(" ", anchor);
    }
    if (state !== "error") view.bar.value = 100;
  }

  function next() {
    while (running < PARALLEL && waiting.length) {
      const job = waiting.shift();
      running += 1;
      send(job.file, job.view, job.choice, () => {
        running -= 1;
        next();
      });
    }
  }

  /** The question "replace (new version) or keep both?" in the file's row; the answer sends the file again. */
  function ask(file, view, body) {
    view.item.dataset.state = "asking";
    view.status.textContent = body.error;
    const choices = document.createElement("span");
    choices.className = "upload-choices";
    [["version", text.textReplace, "primary"], ["keep", text.textKeep, "secondary"]].forEach(([choice, label, style]) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = style + " small";
      button.dataset.choice = choice;
      button.textContent = label;
      button.addEventListener("click", () => {
        choices.remove();
        view.bar.value = 0;
        waiting.push({ file, view, choice });
        next();
      });
      choices.append(button);
    });
    view.item.append(choices);
  }

  function send(file, view, choice, done) {
    const data = new FormData();
    data.append("file", file, file.name);
    if (collection) data.append("collection", collection.value);
    data.append("same_name", choice || sameName());
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("Accept", "application/json");
    request.setRequestHeader("X-CSRFToken", csrf);
    view.item.dataset.state = "uploading";
    view.status.textContent = text.textUploading;
    request.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      view.bar.value = Math.round((event.loaded / event.total) * 100);
      if (event.loaded === event.total) view.status.textContent = text.textChecking;
    });
    request.addEventListener("load", () => {
      let body = {};
      try {
        body = JSON.parse(request.responseText);
      } catch (error) { /* an HTML error page */ }
      if (request.status >= 200 && request.status < 300 && body.ok) {
        settle(view, "done", body.notice || text.textQueued, body.document && body.document.url);
        document.body.dispatchEvent(new CustomEvent("documents-changed", { bubbles: true }));
      } else if (body.code === "same_name") {
        ask(file, view, body);
      } else {
        settle(view, "error", body.error || text.textFailed, body.url);
      }
      done();
    });
    request.addEventListener("error", () => {
      settle(view, "error", text.textFailed);
      done();
    });
    request.send(data);
  }

  function add(files) {
    for (const file of Array.from(files)) {
      const view = row(file);
      if (maxBytes && file.size > maxBytes) {
        settle(view, "error", text.textTooLarge);
        continue;
      }
      waiting.push({ file, view });
    }
    next();
  }

  input.addEventListener("change", () => {
    add(input.files);
    input.value = "";
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    add(input.files);
    input.value = "";
  });

  ["dragenter", "dragover"].forEach((name) =>
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    })
  );
  ["dragleave", "drop"].forEach((name) =>
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
    })
  );
  zone.addEventListener("drop", (event) => {
    if (event.dataTransfer && event.dataTransfer.files.length) add(event.dataTransfer.files);
  });
  // A file dropped beside the zone would otherwise be opened by the browser, leaving the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
})();
