"""Every number of the audiocap signal path, in one place.

The front-end values are those of Google's published VGGish (``vggish_params.py``)
and must not change: the AudioSet embeddings the classifier is trained on were
made with them. Training and the daemon import these same names, so training
features and live features cannot drift apart.
"""

from __future__ import annotations

# --- Audio conditioning -------------------------------------------------------
SAMPLE_RATE = 16000
"""Rate of the front end, Hz. Everything is resampled to this first."""

RESAMPLE_FILTER = "kaiser_best"
"""resampy filter used by default (the published VGGish code uses resampy's default)."""

RESAMPLE_CHUNK_SECONDS = 0.1
"""The streaming resampler computes output in chunks of about this length, so
that its result does not depend on how the input was split into blocks."""

RESAMPLE_PHASE_GROUPS = 4
"""The streaming resampler multiplies its phases in this many groups of
neighbouring phases, each with only the input columns its taps reach: one
phase's taps cover about 40 % of the table's columns at 44.1 kHz, so the
groups skip most of the zeros a single product would multiply (4 was fastest
at 44.1 kHz: 0.34 ms per 0.96 s against 0.9 ms for one product;
``bench/frontend.py`` times the resampler)."""

# --- Log-mel front end --------------------------------------------------------
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
MEL_BREAK_FREQUENCY_HERTZ = 700.0
"""HTK mel scale: mel = MEL_HIGH_FREQUENCY_Q * ln(1 + hz / MEL_BREAK_FREQUENCY_HERTZ)."""
MEL_HIGH_FREQUENCY_Q = 1127.0
LOG_OFFSET = 0.01
"""Added to the mel energies before the log, to avoid log(0)."""

EXAMPLE_WINDOW_SECONDS = 0.96
"""Each example covers 96 frames."""
EXAMPLE_HOP_SECONDS = 0.96
"""Examples do not overlap."""

STFT_WINDOW_SAMPLES = int(round(SAMPLE_RATE * STFT_WINDOW_SECONDS))  # 400
STFT_HOP_SAMPLES = int(round(SAMPLE_RATE * STFT_HOP_SECONDS))  # 160
FFT_LENGTH = 2 ** (STFT_WINDOW_SAMPLES - 1).bit_length()  # 512: next power of two
NUM_SPECTROGRAM_BINS = FFT_LENGTH // 2 + 1  # 257
FRAMES_PER_SECOND = 1.0 / STFT_HOP_SECONDS  # 100
NUM_FRAMES = int(round(EXAMPLE_WINDOW_SECONDS * FRAMES_PER_SECOND))  # 96
EXAMPLE_HOP_FRAMES = int(round(EXAMPLE_HOP_SECONDS * FRAMES_PER_SECOND))  # 96
EXAMPLE_HOP_SAMPLES = EXAMPLE_HOP_FRAMES * STFT_HOP_SAMPLES  # 15360
EXAMPLE_SPAN_SAMPLES = (NUM_FRAMES - 1) * STFT_HOP_SAMPLES + STFT_WINDOW_SAMPLES  # 15600
"""Samples one example needs; fewer than this at 16 kHz give zero examples."""

# --- VGGish network -----------------------------------------------------------
EMBEDDING_SIZE = 128
VGGISH_FC_SIZE = 4096
VGGISH_CONV_FILTERS = (64, 128, 256, 256, 512, 512)
DEFAULT_VGGISH_HANDLE = "https://tfhub.dev/google/vggish/1"
VGGISH_CHECKPOINT_URL = "https://storage.googleapis.com/audioset/vggish_model.ckpt"
VGGISH_CHECKPOINT_SHA256 = "0962b1914e3e053922d957c45bc84a78c985765641dc6bceeeb3a7d8dfecfdf6"
VGGISH_CHECKPOINT_BYTES = 291_108_469
"""The released checkpoint's sha256 and size: a download that differs is refused."""

# --- PCA and 8-bit quantisation (the AudioSet release format) ----------------
PCA_EIGEN_VECTORS_NAME = "pca_eigen_vectors"
PCA_MEANS_NAME = "pca_means"
QUANTIZE_MIN_VAL = -2.0
QUANTIZE_MAX_VAL = +2.0
QUANTIZED_LEVELS = 255
PCA_PARAMS_URL = "https://storage.googleapis.com/audioset/vggish_pca_params.npz"
PCA_PARAMS_SHA256 = "4d878af3e306defbfb37095365aa7e5a6cecb86bad13e859e626151c4e6a8b9d"

# --- Rolling window and classifier ---------------------------------------------
WINDOW_EMBEDDINGS = 10
"""Embeddings in the classifier's window (10 x 0.96 s = 9.6 s)."""
EMBEDDING_SECONDS = EXAMPLE_HOP_SECONDS
"""Audio time between two consecutive embeddings."""
EMBEDDING_SCALE = 255.0
"""uint8 embeddings are divided by this before entering the classifier."""
CLASS_NAMES = ("Speech", "Animal", "Music", "Vehicle")

# --- Training ---------------------------------------------------------------------
AUDIOSET_NUM_LABELS = 527
"""Labels in the AudioSet release (``class_labels_indices.csv``)."""
DEFAULT_THRESHOLD = 0.5
"""Per-class decision threshold used when a bundle does not calibrate one."""

# --- Daemon ---------------------------------------------------------------------
WINDOW_MIN_EMBEDDINGS = 1
"""The daemon scores a partial window as soon as it holds this many embeddings
(the available embeddings are tiled to fill the window, see pipeline/window.py)."""
EVENT_MIN_DURATION_SECONDS = 1.0
"""An event is published only once its class stayed above the off threshold this long."""
EVENT_HOLD_SECONDS = 2.0
"""An event ends only after its class stayed below the off threshold this long."""
EVENT_OFF_RATIO = 0.8
"""Default off threshold = on threshold x this ratio (hysteresis)."""
EVENT_LOOKAHEAD_EMBEDDINGS = 1
"""Per-second captions: each second is scored once this many later embeddings
have arrived (0.96 s of extra caption latency), unless the bundle's calibrated
tracker or ``[events] lookahead_s`` says otherwise."""
MIC_BLOCK_SECONDS = 0.1
"""Audio delivered per sounddevice callback."""
MIC_QUEUE_SECONDS = 10.0
"""Audio the callback queue holds before blocks are dropped (and counted)."""
MIC_WARMUP_SECONDS = 1.0
"""After (re)opening a device, audio is discarded until its clock has run this
long without a jump (at most five times this long): PortAudio/PulseAudio
deliver the first blocks irregularly, which would put a jump into the captions' times."""
MIC_STALL_SECONDS = 2.0
"""A capture stream that delivers nothing this long is treated as failed and re-opened."""
MIC_FIRST_BLOCK_SECONDS = 5.0
"""...except right after opening, when a suspended sound server source may take this long."""
MIC_RETRY_MIN_SECONDS = 1.0
MIC_RETRY_MAX_SECONDS = 30.0
"""Back-off bounds for re-opening a failed or vanished input device."""
TIME_REANCHOR_SECONDS = 0.02
"""A capture block whose audio-clock stamp differs from the time predicted by
the sample count by more than this re-anchors the stream's clock (drift, lost
blocks); smaller differences are callback jitter."""
FILE_BLOCK_SECONDS = 0.1
"""Block length the file source reads (and, at real-time pace, sleeps)."""
MQTT_PORT = 1883
MQTT_TLS_PORT = 8883
DISPLAY_MQTT_PORT = 1884
"""The MQTT listener of display/mosquitto-local.conf (beside a system broker on 1883)."""
DISPLAY_WS_PORT = 9001
"""The display's websockets listener (display/mosquitto*.conf): not for the daemon's plain MQTT."""
MQTT_KEEPALIVE_SECONDS = 30
MQTT_RECONNECT_MIN_SECONDS = 1
MQTT_RECONNECT_MAX_SECONDS = 30
MQTT_QUEUE_MESSAGES = 10000
"""QoS 1 messages (captions, states) kept while the broker is unreachable."""
MQTT_MEMORY_MESSAGES = 1000
"""With a journal, QoS 1 messages waiting in memory at most; the others wait on disk only."""
MQTT_INFLIGHT_WINDOW = 100
"""QoS 1 messages handed to paho and not yet acknowledged, at most (paho sends 20 at a time)."""
DRAIN_TIMEOUT_SECONDS = 10.0
"""At the end of a file/replay run, how long to wait for the broker to take what is queued."""
SHUTDOWN_SECONDS = 2.0
"""SIGTERM/SIGINT: the daemon is gone within this time."""
METRICS_INTERVAL_SECONDS = 30.0
"""Health/metrics message period."""
METRICS_HISTORY = 600
"""Per-second processing-time and latency samples kept for percentiles."""

# --- Audio clock ----------------------------------------------------------------
CLOCK_SMOOTHING = 0.05
"""Weight of each block's timestamp in the smoothed audio clock (about 2 s of
0.1 s blocks): removes the sound server's timestamp jitter, follows drift."""
CLOCK_RESYNC_SECONDS = 0.5
"""A block whose timestamp is this far off the smoothed clock re-anchors it."""

LEVEL_FLOOR_DBFS = -120.0
"""The lowest audio level reported (dBFS): digital silence reads as this, never -inf."""
