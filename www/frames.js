// Frames: the webcam, decoded images, and the calibration set the page keeps (so that a
// restarted engine can be given the same frames again). Frames are ImageBitmaps, scaled so
// their long side is at most MAX_SIDE (what the panes show) or CALIBRATION_SIDE (what the
// calibration set keeps: enough for the usual model inputs, and 128 frames stay under 90 MB).

export const MAX_SIDE = 640;
export const CALIBRATION_SIDE = 480;
export const MAX_FRAMES = 128;

/**
 * A copy of an image source scaled down to `maxSide`. A bitmap `source` is closed (consumed)
 * unless `keep`; without `keep` a bitmap already small enough is returned as is.
 */
export async function fitBitmap(source, width, height, maxSide = MAX_SIDE, { keep = false } = {}) {
  const scale = Math.min(1, maxSide / Math.max(width, height));
  if (scale === 1 && source instanceof ImageBitmap && !keep) return source;
  const bitmap = await createImageBitmap(source, {
    resizeWidth: Math.max(1, Math.round(width * scale)),
    resizeHeight: Math.max(1, Math.round(height * scale)),
    resizeQuality: 'high',
  });
  if (source instanceof ImageBitmap && !keep) source.close();
  return bitmap;
}

/** Decodes an image file or blob; the error names the file. */
export async function decodeImage(blob, name = 'image', maxSide = MAX_SIDE) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    throw new Error(`${name} could not be decoded as an image`);
  }
  return fitBitmap(bitmap, bitmap.width, bitmap.height, maxSide);
}

/** Fetches and decodes one of the shipped images. */
export async function loadSample(file) {
  const response = await fetch(`models/images/${file}`);
  if (!response.ok) throw new Error(`models/images/${file}: HTTP ${response.status}`);
  return decodeImage(await response.blob(), file);
}

/** The webcam, through a <video> element the page shows. */
export class Camera extends EventTarget {
  /** @type {MediaStream | null} */
  #stream = null;

  /** @param {HTMLVideoElement} video */
  constructor(video) {
    super();
    this.video = video;
    /** 'off' | 'starting' | 'on' | 'unavailable' */
    this.state = 'off';
    /** Why the camera is unavailable, for the page. */
    this.reason = '';
  }

  get on() {
    return this.state === 'on';
  }

  async start() {
    if (this.state === 'on' || this.state === 'starting') return;
    this.#set('starting');
    if (!navigator.mediaDevices?.getUserMedia) {
      this.#unavailable('this browser gives pages no camera access here (it needs a secure context: https or localhost)');
      return;
    }
    try {
      this.#stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: 'user' },
        audio: false,
      });
    } catch (err) {
      const why = {
        NotAllowedError: 'camera access was denied',
        SecurityError: 'camera access was denied',
        NotFoundError: 'no camera was found',
        OverconstrainedError: 'no camera was found',
        NotReadableError: 'the camera is in use by another program',
        AbortError: 'the camera could not be started',
      }[err?.name];
      this.#unavailable(why ?? `the camera could not be started (${err?.message ?? err})`);
      return;
    }
    const [track] = this.#stream.getVideoTracks();
    track?.addEventListener('ended', () => this.stop('the camera was disconnected'));
    this.video.srcObject = this.#stream;
    try {
      await this.video.play();
      if (!this.video.videoWidth) await new Promise((resolve) => this.video.addEventListener('loadeddata', resolve, { once: true }));
    } catch (err) {
      this.stop();
      this.#unavailable(`the camera's video could not be played (${err.message})`);
      return;
    }
    this.#set('on');
  }

  /** @param {string} [reason]  set when the camera went away by itself */
  stop(reason) {
    this.#stream?.getTracks().forEach((t) => t.stop());
    this.#stream = null;
    this.video.srcObject = null;
    if (reason) this.#unavailable(reason);
    else this.#set('off');
  }

  /** The current frame as a bitmap (scaled to `maxSide`), or null when off. */
  async grab(maxSide = MAX_SIDE) {
    if (!this.on || !this.video.videoWidth) return null;
    const { videoWidth: w, videoHeight: h } = this.video;
    const scale = Math.min(1, maxSide / Math.max(w, h));
    return createImageBitmap(this.video, { resizeWidth: Math.round(w * scale), resizeHeight: Math.round(h * scale) });
  }

  #unavailable(reason) {
    this.reason = reason;
    this.#set('unavailable');
  }

  #set(state) {
    this.state = state;
    this.dispatchEvent(new Event('change'));
  }
}

/**
 * @typedef {object} Frame
 * @property {number} id
 * @property {ImageBitmap} bitmap
 * @property {string} label
 * @property {'webcam' | 'image' | 'sample'} source
 */

/** The calibration set: frames in the order added, at most MAX_FRAMES (oldest dropped). */
export class FrameStore extends EventTarget {
  /** @type {Frame[]} */
  frames = [];
  #nextId = 1;

  get size() {
    return this.frames.length;
  }

  /** @param {ImageBitmap} bitmap @param {string} label @param {Frame['source']} source */
  add(bitmap, label, source) {
    const frame = { id: this.#nextId++, bitmap, label, source };
    this.frames.push(frame);
    while (this.frames.length > MAX_FRAMES) this.frames.shift().bitmap.close();
    this.dispatchEvent(new Event('change'));
    return frame;
  }

  get(id) {
    return this.frames.find((f) => f.id === id) ?? null;
  }

  remove(id) {
    const i = this.frames.findIndex((f) => f.id === id);
    if (i < 0) return;
    const [frame] = this.frames.splice(i, 1);
    frame.bitmap.close();
    this.dispatchEvent(new Event('change'));
  }

  clear() {
    for (const f of this.frames) f.bitmap.close();
    this.frames = [];
    this.dispatchEvent(new Event('change'));
  }
}
