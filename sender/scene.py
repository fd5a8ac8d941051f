"""The picture of the camera-like fake camera (``--source scene``).

The test pattern's flat bands compress unlike any camera, so no bitrate or quality figure
measured on them transfers to one. This picture has what a camera's has: texture at every
scale (fractal noise: clouds, mountains, forest, grass), hard edges (ridges, houses, road
markings), colour, a slow pan across a landscape larger than the frame with a gentle tilt,
a car driving through it, and sensor noise that changes every frame. The pan moves by
half pixels, as a camera's does by any fraction: a picture that moved by whole pixels
only is predicted exactly by an encoder's whole-pixel motion search, which flattered the
fastest presets (x264 ``ultrafast`` scored 0.7 dB above ``superfast`` on whole-pixel
steps and 1.5 dB below it on fractional ones).

Every frame is a pure function of its sequence number (everything random is seeded):
``Scene.render(n)`` regenerates the frame the sender stamped ``n``, all but the stamp, so
a benchmark can score a decoded frame against its source (``bench.quality``).

It is cheap per frame (1920x1080: about 1.2 ms of one core on a 2-core VM, ``python -m
bench.scene_cost``): the landscape and a bank of noise fields are made once (about two
seconds at 1080p), in yuv420p, once per half-pixel phase of the pan (``PAN_PHASES``
copies, shifted by bicubic interpolation); a frame is a slice of one of them with one
noise field added (one pass, written straight into the video frame's planes), the car
pasted in with the same field on it, and another field subtracted, with OpenCV's
saturating uint8 arithmetic. Pure numpy and OpenCV: no PyAV, no clock.
"""

from __future__ import annotations

import functools
import logging
import math
import time

import cv2
import numpy as np

logger = logging.getLogger(__name__)

SEED = 11
NOISE_FIELDS = 8  # frame n adds field n % 8 and subtracts another: a 64-frame noise cycle
NOISE_SIGMA = 3.0  # luma levels, per field (the frame's noise is about 0.8 of this)
CHROMA_NOISE_SIGMA = 1.5
PAN_WIDTH = 0.5  # the landscape is wider than the frame by this share of its width...
PAN_HEIGHT = 0.15  # ...and taller by this share of its height
PAN_FRAMES = 250  # one sweep across the extra width (8.3 s at 30 fps), then back
# The pan's horizontal steps are in half pixels (PAN_FRAMES divides no size's margin, so
# they fall on every phase): the landscape is kept shifted by 0, 0.5, 1 and 1.5 pixels,
# so that each frame is still a slice at an even offset (which keeps the half-size chroma
# planes aligned).
PAN_PHASES = 4
TILT_FRAMES = 300  # one period of the slow tilt across the extra height
CAR_FRAMES = 150  # the car crosses the whole landscape in this many frames
HORIZON = 0.45  # of the landscape's height
ROAD = (0.76, 0.86)  # top and bottom of the road, of the landscape's height

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


def planes(image: np.ndarray, width: int, height: int) -> Planes:
    """The Y, U and V planes of a flat yuv420p buffer, as views."""
    area = width * height
    chroma = image[area:].reshape(2, height // 2, width // 2)
    return image[:area].reshape(height, width), chroma[0], chroma[1]


def _even(value: float) -> int:
    return round(value / 2) * 2


def _triangle(phase: float) -> float:
    """0 up to 1 and back to 0 over each unit of ``phase``."""
    p = phase % 1.0
    return 2 * p if p < 0.5 else 2 - 2 * p


def fractal(
    rng: np.random.Generator,
    height: int,
    width: int,
    cells: float,
    *,
    stretch: float = 1.0,
    persistence: float = 0.55,
    finest: float = 2.0,
) -> np.ndarray:
    """Fractal (fBm) value noise, mean 0 and standard deviation 1: octaves of random grids
    upsampled bicubically, each twice as fine and ``persistence`` times as strong, down to
    ``finest``-pixel features. ``cells``: features across the width at the coarsest octave;
    ``stretch`` > 1 makes features wider than tall, < 1 taller than wide."""
    total = np.zeros((height, width), np.float32)
    amplitude = 1.0
    across = cells
    while width / across >= finest:
        grid_x = max(2, round(across))
        grid_y = max(2, round(across * height / width / stretch))
        grid = rng.standard_normal((grid_y, grid_x), dtype=np.float32)
        total += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        amplitude *= persistence
        across *= 2
    total -= total.mean()
    total /= total.std() + 1e-6
    return total


def _mix(under: np.ndarray, over: np.ndarray | tuple[float, ...], amount: np.ndarray) -> None:
    """``under`` blended towards ``over`` by ``amount`` (0..1, one value per pixel), in place."""
    under += (np.asarray(over, np.float32) - under) * amount[..., None]


def _edge(rows: np.ndarray, line: np.ndarray, height: int) -> np.ndarray:
    """1 below a skyline (``line``: a row per column, as a share of ``height``), 0 above,
    with a one-pixel anti-aliased edge."""
    below: np.ndarray = np.clip((rows - line[None, :]) * height + 0.5, 0.0, 1.0)
    return below


def _landscape(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The RGB landscape (float32, 0..1): sky and clouds, far mountains, a forested
    hill, a meadow, a road, houses; a fine grain below the sky, a lens's softness."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    image = np.empty((height, width, 3), np.float32)
    sky = np.clip(rows / HORIZON, 0.0, 1.0) ** 0.7
    image[:] = np.array([0.22, 0.42, 0.78], np.float32)
    _mix(image, (0.72, 0.82, 0.93), np.broadcast_to(sky, (height, width)))
    clouds = fractal(rng, height, width, 3, stretch=3.0, persistence=0.6)
    cover = np.clip((clouds - 0.1) / 0.9, 0.0, 1.0) * np.clip(1.6 - 1.6 * rows / HORIZON, 0, 1)
    shade = 1.0 - 0.12 * np.clip(fractal(rng, height, width, 14), 0.0, None) * cover
    _mix(image, (0.97, 0.97, 0.98), cover)
    image *= shade[..., None]

    # Far mountains: a ridged skyline, hazy blue-grey rock, snow near the peaks.
    ridge = fractal(rng, 1, width, 4, persistence=0.5)[0]
    peaks = HORIZON - 0.04 - 0.11 * (1.0 - np.abs(ridge)) - 0.03 * ridge
    rock = fractal(rng, height, width, 24, persistence=0.62)
    mountain = np.empty_like(image)
    mountain[:] = (0.42, 0.47, 0.56)
    mountain *= (1.0 + 0.16 * rock)[..., None]
    snow = np.clip((peaks[None, :] + 0.05 - rows) * 40 + 0.6 * rock, 0.0, 1.0)
    _mix(mountain, (0.9, 0.92, 0.96), snow)
    land = _edge(rows, peaks, height)
    _mix(image, mountain, land)

    # A forested hill: dark canopy texture with lighter clearings.
    hill = HORIZON + 0.06 - 0.1 * (0.5 + 0.3 * fractal(rng, 1, width, 3)[0])
    canopy = fractal(rng, height, width, width / 14, persistence=0.7)
    clearing = np.clip(fractal(rng, height, width, 5) - 0.8, 0.0, 0.4) * 2.5
    forest = np.empty_like(image)
    forest[:] = (0.13, 0.26, 0.11)
    forest *= np.clip(1.0 + 0.45 * canopy, 0.2, None)[..., None]
    _mix(forest, (0.42, 0.5, 0.2), clearing)
    _mix(image, forest, _edge(rows, hill, height))

    # A meadow: coarse patches of greens and browns, fine upright grass streaks.
    ground = HORIZON + 0.17 + 0.015 * fractal(rng, 1, width, 6)[0]
    patches = fractal(rng, height, width, 6)
    grass = fractal(rng, height, width, width / 40, stretch=0.2, persistence=0.7)
    meadow = np.empty_like(image)
    meadow[:] = (0.33, 0.46, 0.15)
    _mix(meadow, (0.5, 0.45, 0.22), np.clip(patches * 0.5, 0.0, 1.0))
    meadow *= np.clip(1.0 + 0.22 * grass, 0.3, None)[..., None]
    _mix(image, meadow, _edge(rows, ground, height))

    _road(image, rng)
    _houses(image, rng)
    # Fine grain on every surface below the sky (the sky stays smooth, as it is).
    image *= (1.0 + 0.05 * land * fractal(rng, height, width, width / 8))[..., None]
    softened: np.ndarray = cv2.GaussianBlur(np.clip(image, 0.0, 1.0), (0, 0), 0.6)
    return softened


def _road(image: np.ndarray, rng: np.random.Generator) -> None:
    """Asphalt across the foreground, white edge lines, a dashed centre line."""
    height, width = image.shape[:2]
    top, bottom = (round(r * height) for r in ROAD)
    asphalt = fractal(rng, bottom - top, width, width / 6, persistence=0.75)
    image[top:bottom] = (0.3 + 0.035 * asphalt)[..., None] * np.array([1.0, 1.0, 1.04])
    line = max(2, height // 150)
    white = (0.88, 0.88, 0.86)
    cv2.rectangle(image, (0, top + line), (width, top + 2 * line), white, -1, cv2.LINE_AA)
    cv2.rectangle(image, (0, bottom - 2 * line), (width, bottom - line), white, -1, cv2.LINE_AA)
    middle = (top + bottom) // 2
    dash = height // 8
    for x in range(0, width, 2 * dash):
        cv2.rectangle(image, (x, middle - line // 2), (x + dash, middle + line // 2), white, -1)


def _houses(image: np.ndarray, rng: np.random.Generator) -> None:
    """A few houses standing on the meadow behind the road: walls, roofs, windows, doors."""
    height, width = image.shape[:2]
    walls = [(0.86, 0.82, 0.72), (0.75, 0.6, 0.45), (0.92, 0.9, 0.88), (0.62, 0.66, 0.7)]
    roofs = [(0.55, 0.18, 0.12), (0.3, 0.28, 0.3), (0.45, 0.3, 0.2)]
    base = round(ROAD[0] * height) - height // 40
    for left in np.linspace(0.05, 0.9, 6) * width + rng.uniform(0, 0.06, 6) * width:
        w = round(height * rng.uniform(0.1, 0.16))
        h = round(w * rng.uniform(0.55, 0.8))
        x0, x1 = round(left), round(left) + w
        y0 = base - h
        wall = walls[rng.integers(len(walls))]
        cv2.rectangle(image, (x0, y0), (x1, base), wall, -1, cv2.LINE_AA)
        roof = np.array([(x0 - w // 10, y0), (x1 + w // 10, y0), ((x0 + x1) // 2, y0 - h // 2)])
        cv2.fillPoly(image, [roof], roofs[rng.integers(len(roofs))], cv2.LINE_AA)
        pane = max(3, w // 7)
        for wx in range(x0 + pane // 2, x1 - pane, 2 * pane):
            cv2.rectangle(
                image, (wx, y0 + h // 5), (wx + pane, y0 + h // 5 + pane), (0.2, 0.24, 0.3), -1
            )
        door = (x0 + w // 2 - pane // 2, base - round(1.6 * pane))
        cv2.rectangle(image, door, (door[0] + pane, base), (0.35, 0.22, 0.12), -1)


def _car(height: int) -> tuple[np.ndarray, np.ndarray]:
    """A red car seen from the side, drawn for a frame ``height`` tall: RGB (uint8) and its
    mask, both of even size."""
    w, h = _even(height * 0.22), _even(height * 0.09)
    rgb = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    wheel = h // 5
    body_top, body_bottom = round(h * 0.45), h - wheel
    cabin = np.array(
        [(w * 0.22, body_top), (w * 0.34, h * 0.08), (w * 0.68, h * 0.08), (w * 0.8, body_top)],
        np.int32,
    )
    for canvas, red, glass, tyre, hub, light in (
        (rgb, (200, 28, 30), (150, 175, 195), (25, 25, 25), (170, 170, 175), (250, 240, 200)),
        (mask, 255, 255, 255, 255, 255),
    ):
        cv2.rectangle(canvas, (0, body_top), (w - 1, body_bottom), red, -1, cv2.LINE_AA)
        cv2.fillPoly(canvas, [cabin], red, cv2.LINE_AA)
        cv2.fillPoly(
            canvas,
            [((cabin - (w // 2, 0)) * 0.82 + (w // 2, h * 0.03)).astype(np.int32)],
            glass,
            cv2.LINE_AA,
        )
        cv2.line(canvas, (w // 2, round(h * 0.12)), (w // 2, body_top), red, max(1, w // 60))
        for centre in (round(w * 0.2), round(w * 0.8)):
            cv2.circle(canvas, (centre, h - wheel - 1), wheel, tyre, -1, cv2.LINE_AA)
            cv2.circle(canvas, (centre, h - wheel - 1), wheel // 2, hub, -1, cv2.LINE_AA)
        cv2.rectangle(
            canvas, (w - w // 30 - 2, body_top + 2), (w - 1, body_top + h // 8), light, -1
        )
    return rgb, mask > 127


def _to_yuv(rgb: np.ndarray) -> Planes:
    """BT.601 limited-range Y, U, V (uint8) of an RGB image (0..1 or 0..255 uint8); chroma
    averaged over 2x2 pixels."""
    scale = 255.0 if rgb.dtype == np.uint8 else 1.0
    r, g, b = (rgb[..., i].astype(np.float32) / scale for i in range(3))
    y = 16 + 219 * (0.299 * r + 0.587 * g + 0.114 * b)
    u = 128 + 224 * (-0.168736 * r - 0.331264 * g + 0.5 * b)
    v = 128 + 224 * (0.5 * r - 0.418688 * g - 0.081312 * b)
    half = (rgb.shape[1] // 2, rgb.shape[0] // 2)
    u, v = (cv2.resize(c, half, interpolation=cv2.INTER_AREA) for c in (u, v))
    y, u, v = (np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, u, v))
    return y, u, v


def _shifted(planes: Planes, pixels: float) -> Planes:
    """Y, U and V moved left by ``pixels`` (chroma by half as many), bicubic; the edge
    repeated on the right (past what a frame's slice reaches)."""
    if not pixels:
        return planes

    def moved(plane: np.ndarray, by: float) -> np.ndarray:
        return cv2.warpAffine(
            plane,
            np.array([[1, 0, by], [0, 1, 0]], np.float32),
            (plane.shape[1], plane.shape[0]),
            flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )

    y, u, v = planes
    return moved(y, pixels), moved(u, pixels / 2), moved(v, pixels / 2)


def _noise_bank(
    rng: np.random.Generator, height: int, width: int, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """``NOISE_FIELDS`` fields of sensor noise (slightly blurred, as a camera's
    demosaicking leaves it), each split into the part to add and the part to subtract, so
    that OpenCV's saturating uint8 add and subtract apply it without a wider type."""
    add = np.empty((NOISE_FIELDS, height, width), np.uint8)
    subtract = np.empty_like(add)
    for i in range(NOISE_FIELDS):
        noise = cv2.GaussianBlur(
            rng.standard_normal((height, width), dtype=np.float32), (0, 0), 0.6
        )
        noise *= sigma / noise.std()
        add[i] = np.clip(np.rint(noise), 0, 255)
        subtract[i] = np.clip(np.rint(-noise), 0, 255)
    return add, subtract


class Scene:
    """The landscape, the car and the noise bank for one frame size, made once;
    ``render(n)`` is frame n. Immutable after construction, so one can be shared."""

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2 or width < 2 or height < 2:
            raise ValueError(f"the scene needs an even width and height, got {width}x{height}")
        started = time.perf_counter()
        self.width, self.height = width, height
        self._margin = (_even(width * PAN_WIDTH), _even(height * PAN_HEIGHT))
        rng = np.random.default_rng(SEED)
        landscape = _landscape(rng, height + self._margin[1], width + self._margin[0])
        yuv = _to_yuv(landscape)
        self._phases = [_shifted(yuv, phase / 2) for phase in range(PAN_PHASES)]
        car, mask = _car(height)
        self._car = _to_yuv(car)
        half = (mask.shape[1] // 2, mask.shape[0] // 2)
        half_mask = cv2.resize(mask.astype(np.uint8), half, interpolation=cv2.INTER_AREA) > 0
        # uint8 (0 or 1): OpenCV's masks; numpy's ``where`` takes them compared with 0
        self._car_masks = tuple(m.astype(np.uint8) for m in (mask, half_mask, half_mask))
        self._noise = _noise_bank(rng, height, width, NOISE_SIGMA)
        self._chroma_noise = _noise_bank(rng, height, width // 2, CHROMA_NOISE_SIGMA)
        logger.info("scene %dx%d made in %.2f s", width, height, time.perf_counter() - started)

    def pan(self, sequence: int) -> tuple[float, int]:
        """The frame's top-left corner in the landscape: x in half pixels, y even."""
        x = self._margin[0] * _triangle(sequence / (2 * PAN_FRAMES))
        y = self._margin[1] * (0.5 - 0.5 * math.cos(2 * math.pi * sequence / TILT_FRAMES))
        return round(x * 2) / 2, _even(y)

    def render(self, sequence: int) -> np.ndarray:
        """Frame ``sequence`` as one flat yuv420p buffer, without the stamp."""
        image = np.empty(self.width * self.height * 3 // 2, np.uint8)
        self.render_into(sequence, *planes(image, self.width, self.height))
        return image

    def render_into(self, sequence: int, luma: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Frame ``sequence`` written into its planes (views, rows may be padded: a video
        frame's own buffers, which saves a copy)."""
        w, h = self.width, self.height
        pan_x, y = self.pan(sequence)
        x = int(pan_x // 2) * 2  # whole pixels, even; the rest is the phase's shift
        landscape_y, landscape_u, landscape_v = self._phases[round((pan_x - x) * 2)]
        # A new pair of noise fields every frame (64 pairs in a cycle): one added, one
        # subtracted, with saturating uint8 arithmetic.
        i = sequence % NOISE_FIELDS
        j = (sequence + 1 + sequence // NOISE_FIELDS) % NOISE_FIELDS
        frame = (luma, u, v)
        adds = (
            self._noise[0][i],
            self._chroma_noise[0][j][: h // 2],
            self._chroma_noise[0][j][h // 2 :],
        )
        subtracts = (
            self._noise[1][j],
            self._chroma_noise[1][i][: h // 2],
            self._chroma_noise[1][i][h // 2 :],
        )
        landscape = (
            landscape_y[y : y + h, x : x + w],
            landscape_u[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2],
            landscape_v[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2],
        )
        # The landscape and the added field in one pass over memory (at 1920x1080 the
        # frame and its fields are megabytes: the passes, not the arithmetic, cost).
        for plane, source, add in zip(frame, landscape, adds, strict=True):
            cv2.add(source, add, dst=plane)
        self._paste_car(frame, adds, sequence, x, y)
        for plane, subtract in zip(frame, subtracts, strict=True):
            cv2.subtract(plane, subtract, dst=plane)

    def _paste_car(
        self, frame: Planes, adds: Planes, sequence: int, pan_x: int, pan_y: int
    ) -> None:
        """The car where it is on the road at frame ``sequence``, clipped to the frame,
        with the frame's added noise field on it as on the rest."""
        car_h, car_w = self._car[0].shape
        road_width = self.width + self._margin[0] + car_w
        world_x = _even(sequence * road_width / CAR_FRAMES) % road_width - car_w
        world_y = _even(ROAD[1] * (self.height + self._margin[1])) - car_h - self.height // 40
        left, top = world_x - pan_x, world_y - pan_y
        x0, x1 = max(left, 0), min(left + car_w, self.width)
        y0, y1 = max(top, 0), min(top + car_h, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        for scale, plane, add, sprite, mask in zip(
            (1, 2, 2), frame, adds, self._car, self._car_masks, strict=True
        ):
            inside = (
                slice((y0 - top) // scale, (y1 - top) // scale),
                slice((x0 - left) // scale, (x1 - left) // scale),
            )
            where = (slice(y0 // scale, y1 // scale), slice(x0 // scale, x1 // scale))
            region = plane[where]
            np.copyto(region, sprite[inside], where=mask[inside] > 0)
            cv2.add(region, add[where], dst=region, mask=mask[inside])


@functools.lru_cache(maxsize=2)
def shared(width: int, height: int) -> Scene:
    """The scene for a frame size, made once per process: the sender reopens its camera
    whenever viewers come back, and a benchmark renders frames of the size it measures."""
    return Scene(width, height)
