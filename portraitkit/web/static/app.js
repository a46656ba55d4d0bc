// portraitkit's pages: live progress, batch actions and the style picker.
// Plain JavaScript, no build step. Pages are rendered by the server; this script only
// keeps them current (Server-Sent Events from /live) and calls the JSON API with the
// signed-in user's token (Authorization: Bearer), which the page carries in a <meta> tag.
"use strict";

(() => {
  const FINAL = new Set(["completed", "partial", "failed", "cancelled"]);
  const token = document.querySelector('meta[name="portraitkit-token"]')?.content ?? "";
  const labels = JSON.parse(document.getElementById("status-labels")?.textContent ?? "{}");

  // -- small helpers --------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super(body.message || `The server answered ${status}.`);
      this.status = status;
      this.code = body.code;
      this.details = body.details || {};
    }
  }

  async function api(method, path, { body, headers } = {}) {
    const response = await fetch(path, {
      method,
      body,
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json", ...headers },
    });
    if (response.status === 401) {
      const here = window.location.pathname + window.location.search;
      window.location.assign(`/signin?next=${encodeURIComponent(here)}`);
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  function announce(text) {
    const region = document.getElementById("announcer");
    if (!region) return;
    region.textContent = "";
    window.setTimeout(() => { region.textContent = text; }, 60);
  }

  function showMessage(element, text, kind) {
    element.textContent = text;
    element.classList.toggle("notice--error", kind === "error");
    element.classList.toggle("notice--success", kind === "success");
    element.hidden = !text;
  }

  function localTimes() {
    const options = { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" };
    const thisYear = new Intl.DateTimeFormat(undefined, options);
    const otherYear = new Intl.DateTimeFormat(undefined, { ...options, year: "numeric" });
    const now = new Date().getFullYear();
    for (const time of document.querySelectorAll("time[data-local]")) {
      const moment = new Date(time.dateTime);
      time.textContent = (moment.getFullYear() === now ? thisYear : otherYear).format(moment);
    }
  }

  async function refreshBalance() {
    try {
      const stats = await api("GET", "/api/user/stats");
      for (const element of document.querySelectorAll(".js-balance")) {
        element.textContent = stats.balance;
      }
    } catch { /* the header keeps the last known balance */ }
  }

  // Works on plain http too, where crypto.randomUUID is not offered.
  function newKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function setBadge(badge, status) {
    badge.className = `badge badge--${status} js-status`;
    badge.dataset.status = status;
    badge.textContent = labels[status] ?? status;
  }

  function setProgress(root, batch) {
    root.querySelector(".js-count").textContent =
      `${batch.completed_count}/${batch.total_count} photos`;
    const meter = root.querySelector(".js-meter");
    meter.setAttribute("aria-valuenow", String(batch.progress));
    meter.setAttribute("aria-valuetext",
      `${batch.completed_count} of ${batch.total_count} photos done`);
    meter.querySelector(".js-meter-fill").style.width = `${batch.progress}%`;
  }

  // One EventSource for several batches: `batch` events until each is final, then `end`.
  function watch(ids, onBatch, onGone) {
    if (!ids.length) return null;
    const query = ids.map((id) => `batch=${encodeURIComponent(id)}`).join("&");
    const source = new EventSource(`/live?${query}`);
    source.addEventListener("batch", (event) => onBatch(JSON.parse(event.data)));
    source.addEventListener("gone", (event) => onGone?.(JSON.parse(event.data).id));
    source.addEventListener("end", () => source.close());
    return source;
  }

  // -- gallery --------------------------------------------------------------------------

  function updateCard(batch) {
    const card = document.querySelector(`.card[data-batch-id="${batch.id}"]`);
    if (!card) return;
    const before = card.dataset.status;
    card.dataset.status = batch.status;
    setBadge(card.querySelector(".js-status"), batch.status);
    setProgress(card, batch);
    card.querySelector(".js-failed").hidden = !batch.failed_count;
    card.querySelector(".js-failed-count").textContent = `${batch.failed_count} failed`;
    const cover = card.querySelector(".js-cover");
    const coverKey = batch.cover_style_key ?? "";
    if (batch.cover_url && (!cover || card.dataset.coverKey !== coverKey)) {
      const image = cover ?? document.createElement("img");
      image.className = "card__cover js-cover";
      image.alt = "";
      image.src = batch.cover_url;
      if (!cover) card.querySelector(".card__media").append(image);
      card.dataset.coverKey = coverKey;
    }
    if (before !== batch.status && FINAL.has(batch.status)) {
      const title = card.querySelector(".card__title").textContent.trim();
      announce(`Batch from ${title}: ${labels[batch.status]}, ` +
        `${batch.completed_count} of ${batch.total_count} photos.`);
    }
  }

  function initGallery() {
    const cards = [...document.querySelectorAll(".card[data-batch-id]")];
    const running = cards.filter((c) => !FINAL.has(c.dataset.status)).map((c) => c.dataset.batchId);
    watch(running, updateCard);
    const error = document.querySelector(".js-gallery-error");
    document.querySelector(".cards")?.addEventListener("click", async (event) => {
      const button = event.target.closest(".js-retry");
      if (!button) return;
      const id = button.dataset.batchId;
      button.disabled = true;
      try {
        await api("POST", `/api/user/batches/${id}/retry`);
        showMessage(error, "", null);
        watch([id], updateCard);
        refreshBalance();
      } catch (err) {
        showMessage(error, err.message, "error");
      } finally {
        button.disabled = false;
      }
    });
  }

  // -- one batch ------------------------------------------------------------------------

  function attemptsText(item) {
    if (!item.attempts) return "Waiting to start";
    const time = item.duration_ms ? ` · ${(item.duration_ms / 1000).toFixed(1)} s` : "";
    return `Attempt ${item.attempts} of ${item.max_attempts}${time}`;
  }

  function updateItem(element, item) {
    element.dataset.status = item.status;
    setBadge(element.querySelector(".js-status"), item.status);
    element.querySelector(".js-attempts").textContent = attemptsText(item);
    const error = element.querySelector(".js-error");
    error.textContent = item.last_error ?? "";
    error.hidden = !item.last_error;
    const frame = element.querySelector(".photo__frame");
    const image = frame.querySelector(".photo__image");
    if (item.image_url && !image) {
      const link = document.createElement("a");
      link.className = "photo__open";
      link.href = item.image_url;
      link.target = "_blank";
      link.rel = "noopener";
      const img = document.createElement("img");
      img.className = "photo__image";
      img.src = item.image_url;
      img.alt = `${item.style_name} portrait`;
      link.append(img);
      frame.replaceChildren(link);
    } else if (!item.image_url && image) {
      const placeholder = document.createElement("div");
      placeholder.className = "photo__placeholder";
      placeholder.setAttribute("aria-hidden", "true");
      placeholder.innerHTML = '<span class="spinner"></span>';
      frame.replaceChildren(placeholder);
    }
  }

  function initBatch() {
    const section = document.querySelector(".batch");
    const id = section.dataset.batchId;
    const message = section.querySelector(".js-message");
    const buttons = {
      retry: section.querySelector(".js-retry"),
      cancel: section.querySelector(".js-cancel"),
      delete: section.querySelector(".js-delete"),
    };
    let source = null;

    function update(batch) {
      const before = section.dataset.status;
      section.dataset.status = batch.status;
      setBadge(section.querySelector(".batch__facts .js-status"), batch.status);
      setProgress(section, batch);
      buttons.retry.hidden = !batch.failed_count;
      buttons.cancel.hidden = !batch.pending_count;
      for (const item of batch.items) {
        const element = section.querySelector(`[data-item-id="${item.id}"]`);
        if (element) updateItem(element, item);
      }
      if (before !== batch.status && FINAL.has(batch.status)) {
        announce(`Batch ${labels[batch.status].toLowerCase()}: ` +
          `${batch.completed_count} of ${batch.total_count} photos.`);
      }
    }

    function follow() {
      source?.close();
      source = watch([id], update, () => window.location.assign("/"));
    }

    async function act(button, work) {
      button.disabled = true;
      try {
        showMessage(message, await work(), "success");
        refreshBalance();
      } catch (err) {
        showMessage(message, err.message, "error");
      } finally {
        button.disabled = false;
      }
    }

    buttons.retry.addEventListener("click", () => act(buttons.retry, async () => {
      const result = await api("POST", `/api/user/batches/${id}/retry`);
      follow();
      return `${plural(result.retried, "photo", "photos")} queued again ` +
        `(${plural(result.charged, "credit", "credits")}).`;
    }));
    buttons.cancel.addEventListener("click", () => act(buttons.cancel, async () => {
      const result = await api("POST", `/api/user/batches/${id}/cancel`);
      update(await api("GET", `/api/user/batches/${id}`));
      return `${plural(result.cancelled, "photo", "photos")} cancelled, ` +
        `${plural(result.refunded, "credit", "credits")} refunded.`;
    }));

    const dialog = document.getElementById("delete-dialog");
    buttons.delete.addEventListener("click", () => dialog.showModal());
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "delete") return;
      act(buttons.delete, async () => {
        await api("DELETE", `/api/user/batches/${id}`);
        source?.close();
        window.location.assign("/");
        return "Deleted.";
      });
    });

    if (!FINAL.has(section.dataset.status)) follow();
  }

  // -- new batch ------------------------------------------------------------------------

  function initPicker() {
    const form = document.getElementById("new-batch");
    const balance = Number(form.dataset.balance);
    const maxBytes = Number(form.dataset.maxBytes);
    const checks = [...form.querySelectorAll(".style__check")];
    const photo = form.querySelector("#photo");
    const upload = form.querySelector(".upload");
    const preview = form.querySelector(".js-photo-preview");
    const photoName = form.querySelector(".js-photo-name");
    const submit = form.querySelector(".js-submit");
    const problem = form.querySelector(".js-problem");
    const count = form.querySelector(".js-count");
    const total = form.querySelector(".js-total");
    const remaining = form.querySelector(".js-remaining");
    let key = null;

    const chosen = () => checks.filter((c) => c.checked);
    const cost = () => chosen().reduce((sum, c) => sum + Number(c.dataset.cost), 0);

    function shortBy() {
      return Math.max(0, cost() - balance);
    }

    function refresh() {
      const n = chosen().length;
      const credits = cost();
      count.textContent = plural(n, "style", "styles");
      total.textContent = plural(credits, "credit", "credits");
      const short = shortBy();
      remaining.classList.toggle("checkout__balance--short", short > 0);
      if (short > 0) {
        remaining.textContent = `Balance ${balance}: ${short} short`;
      } else if (n) {
        remaining.textContent = `Balance ${balance} → ${balance - credits} after`;
      } else {
        remaining.textContent = `Balance ${plural(balance, "credit", "credits")}`;
      }
      submit.setAttribute("aria-disabled", String(short > 0));
      submit.textContent = n ? `Start ${plural(n, "portrait", "portraits")}` : "Start batch";
      const refusal = short > 0
        ? `Not enough credits: ${credits} needed, ${balance} left. Remove a style to continue.`
        : "";
      showProblem(refusal);
    }

    function showProblem(text) {
      problem.textContent = text;
      problem.hidden = !text;
    }

    function choosePhoto(file) {
      if (!file) return;
      if (!/^image\/(jpeg|png|webp)$/.test(file.type)) {
        showProblem("Choose a JPEG, PNG or WebP photo.");
        return;
      }
      if (file.size > maxBytes) {
        showProblem(`That photo is ${(file.size / 1048576).toFixed(1)} MB; ` +
          `the limit is ${Math.round(maxBytes / 1048576)} MB.`);
        return;
      }
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.src = URL.createObjectURL(file);
      preview.hidden = false;
      photoName.textContent = file.name;
      refresh();
    }

    photo.addEventListener("change", () => choosePhoto(photo.files[0]));
    for (const check of checks) check.addEventListener("change", refresh);
    upload.addEventListener("dragover", (event) => {
      event.preventDefault();
      upload.classList.add("upload--dragging");
    });
    upload.addEventListener("dragleave", () => upload.classList.remove("upload--dragging"));
    upload.addEventListener("drop", (event) => {
      event.preventDefault();
      upload.classList.remove("upload--dragging");
      if (event.dataTransfer.files.length) {
        photo.files = event.dataTransfer.files;
        choosePhoto(photo.files[0]);
      }
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (submit.getAttribute("aria-busy") === "true") return;
      let reason = "";
      let focus = null;
      if (shortBy() > 0) {
        reason = problem.textContent;
      } else if (!photo.files.length) {
        [reason, focus] = ["Choose a photo first.", photo];
      } else if (!chosen().length) {
        [reason, focus] = ["Pick at least one style.", checks[0]];
      }
      if (reason) {
        showProblem(reason);
        focus?.focus();
        return;
      }
      const body = new FormData();
      body.append("photo", photo.files[0]);
      for (const check of chosen()) body.append("styles", check.value);
      const prompt = form.querySelector("#custom_prompt").value.trim();
      if (prompt) body.append("custom_prompt", prompt);
      key ??= newKey(); // the same key if a dropped connection makes the user try again
      submit.setAttribute("aria-busy", "true");
      submit.textContent = "Starting…";
      try {
        const batch = await api("POST", "/api/generate/batch", {
          body, headers: { "Idempotency-Key": key },
        });
        window.location.assign(`/?created=${batch.id}`);
      } catch (err) {
        if (err instanceof ApiError) key = null; // the server answered: nothing was made
        submit.removeAttribute("aria-busy");
        refresh();
        showProblem(err.message);
      }
    });
    refresh();
  }

  // -- start ----------------------------------------------------------------------------

  localTimes();
  const start = { gallery: initGallery, batch: initBatch, new: initPicker }[document.body.dataset.page];
  start?.();
})();
