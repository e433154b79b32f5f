// The vtx page: a file goes up with tus-js-client (resumable, with progress), the video's status
// arrives from its event stream (GET /v1/videos/{id}/events), and hls.js plays it as soon as the
// first tier is live, switching to the high tier when it replaces the fast one.
'use strict';

const $ = (id) => document.getElementById(id);
// What the page did, for people and for the browser tests.
const vtx = (window.vtx = { progress: 0, state: null, liveTier: null, tiers: [], ended: false, errors: [], videoId: null, hls: null });

const log = (line) => {
  $('log').textContent += `${new Date().toISOString().slice(11, 19)} ${line}\n`;
};

$('token').value = new URLSearchParams(location.search).get('token') || localStorage.getItem('vtx-token') || '';

$('upload').addEventListener('click', () => {
  const file = $('file').files[0];
  const token = $('token').value.trim();
  if (!file) return log('pick a video first');
  localStorage.setItem('vtx-token', token);
  let uploadToken = null;
  const upload = new tus.Upload(file, {
    endpoint: '/v1/tus',
    metadata: { filename: file.name, filetype: file.type },
    chunkSize: 4 * 1024 * 1024,
    retryDelays: [0, 1000, 3000, 5000, 10000],
    // The creation answers with the session's own token: the rest of the upload and the status
    // stream use it.
    onAfterResponse: (_req, res) => {
      const t = res.getHeader('vtx-upload-token');
      if (t) uploadToken = t;
    },
    // One Authorization header per request (XHR joins repeated ones): the grant creates, the
    // session's token does the rest.
    onBeforeRequest: (req) => {
      const use = uploadToken && req.getMethod() !== 'POST' ? uploadToken : token;
      req.setHeader('Authorization', `Bearer ${use}`);
    },
    onProgress: (sent, total) => {
      vtx.progress = total ? sent / total : 0;
      $('progress').value = vtx.progress;
      $('percent').textContent = `${Math.floor(vtx.progress * 100)}%`;
    },
    onError: (e) => {
      vtx.errors.push(`upload: ${e}`);
      log(`upload failed: ${e}`);
    },
    onSuccess: async () => {
      log('uploaded');
      const res = await fetch(upload.url, {
        method: 'HEAD',
        headers: { 'Tus-Resumable': '1.0.0', Authorization: `Bearer ${uploadToken || token}` },
      });
      const videoId = res.headers.get('vtx-video-id');
      if (!videoId) return log('the upload completed without a video id');
      vtx.videoId = videoId;
      follow(videoId, uploadToken || token);
    },
  });
  upload.findPreviousUploads().then((previous) => {
    if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
    upload.start();
  });
});

// Reads the status stream (fetch, since EventSource cannot send a token).
async function follow(videoId, token) {
  for (;;) {
    try {
      const res = await fetch(`/v1/videos/${videoId}/events`, { headers: { Authorization: `Bearer ${token}` } });
      if (!res.ok) throw new Error(`status stream: ${res.status}`);
      const reader = res.body.getReader();
      const text = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += text.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const message = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = message.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
          if (data) show(JSON.parse(data));
        }
      }
    } catch (e) {
      log(`${e}; following again`);
    }
    if (vtx.state === 'failed') return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function show(video) {
  vtx.state = video.state;
  $('state').textContent = video.state;
  if (video.error) log(`failed: ${video.error.code}: ${video.error.message}`);
  const pb = video.playback;
  if (!pb) return;
  if (video.live_tier && video.live_tier !== vtx.liveTier) {
    vtx.liveTier = video.live_tier;
    vtx.tiers.push(video.live_tier);
    $('tier').textContent = `(${video.live_tier} tier)`;
    log(`${video.live_tier} tier live`);
    play(pb.hls);
  }
  if (pb.cover) {
    $('cover').src = pb.cover;
    $('cover').hidden = false;
  }
  const body = $('renditions').querySelector('tbody');
  body.textContent = '';
  for (const r of pb.mp4) {
    const row = body.insertRow();
    for (const cell of [r.name, `${r.width}x${r.height}`, `${(r.bitrate / 1e6).toFixed(2)} Mb/s`, r.codec]) {
      row.insertCell().textContent = cell;
    }
  }
  $('renditions').hidden = pb.mp4.length === 0;
}

// Plays `url`; a new tier takes over where the old one was.
function play(url) {
  if (!url) return;
  const video = $('player');
  const at = video.currentTime || 0;
  const wasEnded = vtx.ended;
  if (vtx.hls) vtx.hls.destroy();
  const hls = (vtx.hls = new Hls());
  hls.on(Hls.Events.ERROR, (_e, data) => {
    if (data.fatal) {
      vtx.errors.push(`hls: ${data.type} ${data.details}`);
      log(`player: ${data.details}`);
    }
  });
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    if (!wasEnded && at > 0) video.currentTime = at;
    if (!wasEnded) video.play().catch((e) => log(`play: ${e}`));
  });
  hls.loadSource(url);
  hls.attachMedia(video);
}

$('player').addEventListener('ended', () => {
  vtx.ended = true;
  log('played to the end');
});
