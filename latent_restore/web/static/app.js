// latent-restore web page: uploads photos to the JSON API, follows their progress, compares results.
// Plain JavaScript on purpose: the page must work offline and has nothing to build.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    dropZone: $("drop-zone"),
    fileInput: $("file-input"),
    maxSize: $("max-size"),
    maxPixels: $("max-pixels"),
    scratch: $("opt-scratch"),
    hr: $("opt-hr"),
    faces: $("opt-faces"),
    list: $("job-list"),
    empty: $("empty"),
    template: $("job-template"),
    downloadAll: $("download-all"),
    placeholder: $("placeholder"),
    viewerBody: $("viewer-body"),
    viewerTitle: $("viewer-title"),
    viewerDownload: $("viewer-download"),
    viewerMeta: $("viewer-meta"),
    compare: $("compare"),
    frame: $("frame"),
    before: $("compare-before"),
    after: $("compare-after"),
    range: $("compare-range"),
    modeSlider: $("mode-slider"),
    modeSide: $("mode-side"),
    ttl: $("ttl"),
  };

  const MAX_PARALLEL_UPLOADS = 2;
  const POLL_MS = 500;
  const RETRY_MS = 2000;
  const ACTIVE = new Set(["queued", "running"]);

  let info = { max_upload_bytes: 50 * 1024 * 1024, modes: {}, ttl_seconds: 3600 };
  const jobs = [];
  const uploadQueue = [];
  let uploads = 0;
  let pollTimer = null;
  let selected = null;
  let nextKey = 1;

  // ---------------------------------------------------------------------------- helpers

  const megabytes = (bytes) => `${Math.round((bytes / 1048576) * 10) / 10} MB`;

  function duration(seconds) {
    if (seconds < 90) return `after ${Math.round(seconds)} seconds`;
    if (seconds < 5400) return `after ${Math.round(seconds / 60)} minutes`;
    const hours = Math.round(seconds / 3600);
    return hours === 1 ? "after an hour" : `after ${hours} hours`;
  }

  function capitalise(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : "";
  }

  function errorOf(response, status) {
    if (response && typeof response.error === "string") return response.error;
    return status ? `The server answered ${status}` : "The connection to the server was lost";
  }

  // ---------------------------------------------------------------------------- server info

  async function loadInfo() {
    try {
      const response = await fetch("/api/info", { cache: "no-store" });
      if (response.ok) info = await response.json();
    } catch {
      // Keep the defaults: uploads will report their own errors.
    }
    ui.maxSize.textContent = megabytes(info.max_upload_bytes);
    if (info.max_pixels) ui.maxPixels.textContent = ` and ${Math.floor(info.max_pixels / 1e6)} megapixels`;
    ui.ttl.textContent = duration(info.ttl_seconds);
    const modes = info.modes || {};
    if (modes.with_scratch === false) {
      ui.scratch.checked = false;
      ui.scratch.disabled = true;
      ui.scratch.closest("label").title = "The weights in use have no scratch-repair networks";
    }
    // The switch starts off and disabled in the HTML: it turns on only once the server says it can.
    if (modes.faces === true) {
      ui.faces.disabled = false;
      ui.faces.checked = true;
      ui.faces.closest("label").title = "";
    } else {
      ui.faces.checked = false;
      ui.faces.disabled = true;
      ui.faces.closest("label").title = "The server runs without a face network";
    }
    syncOptions();
    document.documentElement.dataset.ready = "true";
  }

  function syncOptions() {
    const hrAvailable = (info.modes || {}).hr !== false;
    ui.hr.disabled = !ui.scratch.checked || !hrAvailable;
    if (ui.hr.disabled) ui.hr.checked = false;
  }

  function currentOptions() {
    return { with_scratch: ui.scratch.checked, hr: ui.hr.checked, faces: ui.faces.checked };
  }

  // ---------------------------------------------------------------------------- adding photos

  function addFiles(files) {
    for (const file of files) {
      const job = {
        key: nextKey++,
        file,
        name: file.name || "pasted image",
        options: currentOptions(),
        status: "pending",
        progress: 0,
        id: null,
        stage: null,
        position: null,
        error: null,
        width: null,
        height: null,
        xhr: null,
        thumbUrl: URL.createObjectURL(file),
      };
      job.node = createNode(job);
      jobs.push(job);
      ui.list.append(job.node);
      if (file.size > info.max_upload_bytes) {
        fail(job, `Larger than the ${megabytes(info.max_upload_bytes)} limit`);
      } else {
        uploadQueue.push(job);
      }
      render(job);
    }
    refreshList();
    pump();
  }

  function pump() {
    while (uploads < MAX_PARALLEL_UPLOADS && uploadQueue.length > 0) upload(uploadQueue.shift());
  }

  function upload(job) {
    uploads += 1;
    job.status = "uploading";
    job.progress = 0;
    const form = new FormData();
    form.append("image", job.file, job.name);
    for (const [key, value] of Object.entries(job.options)) form.append(key, value ? "true" : "false");
    const xhr = new XMLHttpRequest();
    job.xhr = xhr;
    xhr.open("POST", "/api/jobs");
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        job.progress = event.loaded / event.total;
        render(job);
      }
    });
    const finish = () => {
      uploads -= 1;
      job.xhr = null;
      refreshList();
      pump();
    };
    xhr.addEventListener("load", () => {
      if (xhr.status === 202) {
        update(job, xhr.response);
        schedulePoll();
      } else if (xhr.status === 503) {
        job.status = "waiting";
        setTimeout(() => {
          if (jobs.includes(job)) {
            uploadQueue.unshift(job);
            pump();
          }
        }, RETRY_MS);
      } else {
        fail(job, errorOf(xhr.response, xhr.status));
      }
      render(job);
      finish();
    });
    xhr.addEventListener("error", () => {
      fail(job, errorOf(null, 0));
      render(job);
      finish();
    });
    xhr.addEventListener("abort", finish);
    render(job);
    xhr.send(form);
  }

  function fail(job, message) {
    job.status = "failed";
    job.error = message;
  }

  function update(job, state) {
    const wasDone = job.status === "done";
    Object.assign(job, {
      id: state.id,
      status: state.status,
      progress: state.progress,
      stage: state.stage,
      position: state.position,
      error: state.error,
      width: state.width,
      height: state.height,
      filename: state.filename,
      notes: state.notes || [],
    });
    if (job.status === "done" && !wasDone) {
      job.node.querySelector(".thumb").src = `/api/jobs/${job.id}/result`;
      if (selected === null) select(job);
    }
  }

  // ---------------------------------------------------------------------------- polling

  function schedulePoll() {
    if (pollTimer === null) pollTimer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    pollTimer = null;
    const active = jobs.filter((job) => job.id && ACTIVE.has(job.status));
    await Promise.all(
      active.map(async (job) => {
        try {
          const response = await fetch(`/api/jobs/${job.id}`, { cache: "no-store" });
          const body = await response.json();
          if (response.ok) update(job, body);
          else fail(job, errorOf(body, response.status));
        } catch {
          return; // a dropped poll is retried on the next round
        }
        render(job);
      }),
    );
    refreshList();
    if (jobs.some((job) => job.id && ACTIVE.has(job.status))) schedulePoll();
  }

  // ---------------------------------------------------------------------------- the list

  function createNode(job) {
    const node = ui.template.content.firstElementChild.cloneNode(true);
    const thumb = node.querySelector(".thumb");
    thumb.src = job.thumbUrl;
    // Formats the browser cannot show (TIFF) keep the plain tile until the restored PNG arrives.
    thumb.addEventListener("error", () => {
      thumb.hidden = true;
    });
    thumb.addEventListener("load", () => {
      thumb.hidden = false;
    });
    node.querySelector(".job-name").textContent = job.name;
    node.querySelector(".job-name").title = job.name;
    node.querySelector(".thumb-button").addEventListener("click", () => {
      if (job.status === "done") select(job);
    });
    node.querySelector(".job-remove").addEventListener("click", () => remove(job));
    return node;
  }

  function statusText(job) {
    switch (job.status) {
      case "pending":
        return "Waiting to upload";
      case "uploading":
        return `Uploading… ${Math.round(job.progress * 100)}%`;
      case "waiting":
        return "The queue is full; retrying shortly…";
      case "queued":
        return job.position > 1 ? `Queued · ${job.position - 1} ahead` : "Queued · next";
      case "running":
        return `Restoring · ${job.stage || "starting"}…`;
      case "done":
        return `Restored · ${job.width} × ${job.height}`;
      case "failed":
        return job.error || "Failed";
      default:
        return capitalise(job.status);
    }
  }

  function render(job) {
    const node = job.node;
    node.className = `job ${job.status}${selected === job ? " selected" : ""}`;
    node.dataset.status = job.status;
    if (job.id) node.dataset.jobId = job.id;
    node.querySelector(".job-status").textContent = statusText(job);
    const shown = job.status === "queued" ? 1 : job.status === "failed" ? 1 : job.progress || 0;
    node.querySelector(".bar").style.setProperty("--p", `${Math.max(3, shown * 100)}%`);
    node.querySelector(".thumb-button").disabled = job.status !== "done";
    const download = node.querySelector(".job-download");
    download.hidden = job.status !== "done";
    if (job.status === "done") {
      download.href = `/api/jobs/${job.id}/result?download=1`;
      download.download = job.filename;
      download.title = `Download ${job.filename}`;
    }
    node.querySelector(".job-remove").setAttribute("aria-label", job.status === "running" ? "Cancel" : "Remove");
  }

  function refreshList() {
    ui.empty.hidden = jobs.length > 0;
    const done = jobs.filter((job) => job.status === "done");
    if (done.length > 0) {
      const ids = done.map((job) => job.id).join(",");
      ui.downloadAll.href = `/api/results.zip?ids=${encodeURIComponent(ids)}`;
      ui.downloadAll.setAttribute("aria-disabled", "false");
      ui.downloadAll.textContent = `Download all (${done.length}, .zip)`;
    } else {
      ui.downloadAll.href = "#";
      ui.downloadAll.setAttribute("aria-disabled", "true");
      ui.downloadAll.textContent = "Download all (.zip)";
    }
  }

  // A running photo is cancelled by the same DELETE: the server stops it at its next stage or tile.
  function remove(job) {
    if (job.xhr) job.xhr.abort();
    const queued = uploadQueue.indexOf(job);
    if (queued >= 0) uploadQueue.splice(queued, 1);
    if (job.id) fetch(`/api/jobs/${job.id}`, { method: "DELETE" }).catch(() => undefined);
    jobs.splice(jobs.indexOf(job), 1);
    job.node.remove();
    URL.revokeObjectURL(job.thumbUrl);
    if (selected === job) {
      selected = null;
      const next = jobs.find((other) => other.status === "done");
      if (next) select(next);
      else showViewer(false);
    }
    refreshList();
  }

  // ---------------------------------------------------------------------------- the viewer

  function showViewer(visible) {
    ui.placeholder.hidden = visible;
    ui.viewerBody.hidden = !visible;
  }

  function select(job) {
    const previous = selected;
    selected = job;
    if (previous) render(previous);
    render(job);
    ui.viewerTitle.textContent = job.name;
    ui.viewerTitle.title = job.name;
    ui.before.src = `/api/jobs/${job.id}/original`;
    ui.after.src = `/api/jobs/${job.id}/result`;
    ui.viewerDownload.href = `/api/jobs/${job.id}/result?download=1`;
    ui.viewerDownload.download = job.filename;
    const done = [`${job.width} × ${job.height} px`];
    if (job.options.with_scratch) done.push(job.options.hr ? "scratches repaired (high resolution)" : "scratches repaired");
    else done.push("overall quality restored");
    if (job.options.faces && (info.modes || {}).faces) done.push("face enhancement on");
    for (const note of job.notes || []) done.push(note);
    ui.viewerMeta.textContent = done.join(" · ");
    setPosition(50);
    showViewer(true);
  }

  function setPosition(percent) {
    ui.range.value = String(percent);
    ui.frame.style.setProperty("--pos", `${percent}%`);
  }

  function setMode(side) {
    ui.compare.classList.toggle("side-mode", side);
    ui.compare.classList.toggle("slider-mode", !side);
    ui.modeSide.setAttribute("aria-pressed", String(side));
    ui.modeSlider.setAttribute("aria-pressed", String(!side));
  }

  // ---------------------------------------------------------------------------- events

  function imagesFrom(list) {
    return Array.from(list || []).filter((file) => file.type.startsWith("image/") || /\.(tiff?|bmp|webp)$/i.test(file.name));
  }

  ui.fileInput.addEventListener("change", () => {
    addFiles(Array.from(ui.fileInput.files));
    ui.fileInput.value = "";
  });
  ui.dropZone.addEventListener("click", (event) => {
    if (event.target.closest("label, input")) return;
    ui.fileInput.click();
  });
  ui.dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      ui.fileInput.click();
    }
  });

  // Accept drops anywhere on the page, so a near miss does not open the photo in the tab instead.
  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    event.preventDefault();
    dragDepth += 1;
    ui.dropZone.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) ui.dropZone.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    ui.dropZone.classList.remove("dragging");
    const files = imagesFrom(event.dataTransfer && event.dataTransfer.files);
    if (files.length > 0) addFiles(files);
  });
  document.addEventListener("paste", (event) => {
    const files = imagesFrom(event.clipboardData && event.clipboardData.files);
    if (files.length > 0) addFiles(files);
  });

  ui.scratch.addEventListener("change", syncOptions);
  ui.range.addEventListener("input", () => setPosition(Number(ui.range.value)));
  ui.modeSlider.addEventListener("click", () => setMode(false));
  ui.modeSide.addEventListener("click", () => setMode(true));
  ui.downloadAll.addEventListener("click", (event) => {
    if (ui.downloadAll.getAttribute("aria-disabled") === "true") event.preventDefault();
  });

  refreshList();
  loadInfo();
})();
