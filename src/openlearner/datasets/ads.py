"""An ads click-log simulator with a planted, drifting ground truth.

See :func:`simulate_ads` for the model. Everything is vectorised numpy driven by one
``np.random.default_rng(seed)``, so a seed fully determines the table.
"""

from __future__ import annotations

import numbers
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from openlearner.errors import Invalid

__all__ = ["simulate_ads"]

#: The default first day (midnight UTC), fixed so that a seed alone determines the table.
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

#: Target overall click-through rate; the bias is solved so the expected CTR equals it.
TARGET_CTR = 0.03

# --- planted truth (logit scale) --------------------------------------------------------
USER_PROPENSITY_STD = 0.9  # historical behaviour: per-user click propensity
AD_QUALITY_STD = 0.9  # historical behaviour: per-ad quality
DAILY_DRIFT_STD = 0.15  # random-walk step of user propensity and ad quality, per day
AD_TURNOVER = 1 / 25  # share of the active ads retired (and replaced by new ids) each day
DEVICE_EFFECT = np.array([0.0, 0.15, -0.10])  # mobile, desktop, tablet
POSITION_EFFECT = np.array([0.0, -0.35, -0.60, -0.80])  # slots 1..4, monotone decreasing
HOUR_EFFECT_AMPLITUDE = 0.15  # hour_effect[h] = A * cos(2π (h - 21) / 24): evenings click more

# --- traffic -----------------------------------------------------------------------------
USER_ACTIVITY_SIGMA = 1.0  # lognormal sigma of the per-user activity weights
AD_SERVING_SIGMA = 0.8  # lognormal sigma of the per-ad serving weights
DEVICE_SHARE = np.array([0.6, 0.3, 0.1])  # preferred device of a user: mobile, desktop, tablet
PREFERRED_DEVICE_PROB = 0.9  # otherwise the device is drawn uniformly from the three
POSITION_SHARE = np.array([0.35, 0.30, 0.20, 0.15])
TRAFFIC_AMPLITUDE = 0.6  # traffic(h) ∝ 1 + A * cos(2π (h - 19) / 24): peak 19h UTC, trough 7h

_US_PER_MINUTE = 60_000_000
_US_PER_HOUR = 3_600_000_000
_MINUTES_PER_DAY = 1440
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("user_id", pa.int64()),
        pa.field("ad_id", pa.int64()),
        pa.field("hour", pa.int64()),
        pa.field("device", pa.int64()),
        pa.field("position", pa.int64()),
        pa.field("clicked", pa.int64()),
    ]
)


def simulate_ads(
    days: int = 7,
    impressions_per_day: int = 100_000,
    seed: int = 0,
    *,
    start: datetime | None = None,
    num_users: int | None = None,
    num_ads: int | None = None,
) -> pa.Table:
    """Simulate an ads click log: one row per impression, ``days * impressions_per_day`` rows.

    Columns (exactly these, in this order; the table is sorted by ``event_time``):

    ============  =========================  ==================================================
    event_time    timestamp[us, tz=UTC]      when the ad was shown (microsecond resolution)
    user_id       int64                      ``0 .. num_users-1``, stable across days
    ad_id         int64                      ``0 .. num_ads-1`` initially, new ids appended as
                                             ads are replaced; stable across days
    hour          int64                      UTC hour of ``event_time`` (0-23)
    device        int64                      0 mobile, 1 desktop, 2 tablet
    position      int64                      slot on the page, 1 (top) .. 4
    clicked       int64                      1 if the impression was clicked, else 0
    ============  =========================  ==================================================

    Planted ground truth. The impression of ad ``a`` to user ``u`` on day ``t`` at UTC hour
    ``h`` on device ``d`` in slot ``p`` is clicked with probability::

        sigmoid(bias + user_propensity_t[u] + ad_quality_t[a]
                + hour_effect[h] + device_effect[d] + position_effect[p])

    * ``user_propensity_0 ~ N(0, 0.9²)`` and ``ad_quality_0 ~ N(0, 0.9²)`` (logit scale) carry
      most of the signal: the historical behaviour of a user and of an ad.
    * Context carries much less, but some: ``hour_effect[h] = 0.15·cos(2π(h-21)/24)``
      (evenings click more), ``device_effect = [0, +0.15, -0.10]`` (mobile, desktop, tablet)
      and ``position_effect = [0, -0.35, -0.60, -0.80]`` for slots 1..4 (monotone decreasing).
    * The truth drifts: every day after the first, each user propensity and ad quality takes a
      random-walk step ``N(0, 0.15²)``, and 4% of the active ads (at least one) are retired and
      replaced by new ads (fresh ids, fresh quality), so yesterday's statistics predict today
      well but not perfectly, and older days less well than recent ones.
    * ``bias`` is solved (once, over all simulated impressions) so that the expected overall
      CTR is 3%; the observed CTR is then 3% up to binomial noise.

    Traffic. Users have lognormal(0, 1) activity weights and a preferred device (60% mobile,
    30% desktop, 10% tablet) used for 90% of their impressions, the rest uniformly at random;
    ads have lognormal(0, 0.8) serving weights; slots are drawn with shares 35/30/20/15%.
    Event times follow a diurnal pattern in UTC (traffic ∝ ``1 + 0.6·cos(2π(h-19)/24)``:
    busiest at 19h, quietest at 7h). Day ``d`` covers ``[start + d days, start + d+1 days)``.

    Args:
        days: number of simulated days (positive int).
        impressions_per_day: impressions per day (positive int).
        seed: seed of ``np.random.default_rng``; the same seed gives an identical table.
        start: first instant of day 0; default 2026-01-01T00:00Z. A naive datetime is taken as
            UTC, an aware one is converted to UTC.
        num_users: number of users; default ``max(50, impressions_per_day // 20)`` (about 20
            impressions per user per day).
        num_ads: number of ads active on any day; default ``max(20, impressions_per_day // 400)``
            (a few hundred impressions per ad per day).

    Returns:
        A ``pyarrow.Table`` with the columns above, sorted by ``event_time``.

    Raises:
        Invalid: a size is not a positive int, the seed is not a non-negative int, or ``start``
            is not a datetime.
    """
    days = _positive_int("days", days)
    impressions_per_day = _positive_int("impressions_per_day", impressions_per_day)
    seed = _seed(seed)
    start_us = _start_us(start)
    users = max(50, impressions_per_day // 20) if num_users is None else _positive_int("num_users", num_users)
    active_ads = max(20, impressions_per_day // 400) if num_ads is None else _positive_int("num_ads", num_ads)

    rng = np.random.default_rng(seed)
    turnover = max(1, round(active_ads * AD_TURNOVER))
    total_ads = active_ads + (days - 1) * turnover

    # Per-entity truth and traffic weights (ids are stable for the whole simulation).
    user_propensity = rng.normal(0.0, USER_PROPENSITY_STD, users)
    user_activity = rng.lognormal(0.0, USER_ACTIVITY_SIGMA, users)
    user_cdf = _cdf(user_activity)
    preferred_device = rng.choice(3, size=users, p=DEVICE_SHARE)
    ad_quality = rng.normal(0.0, AD_QUALITY_STD, total_ads)
    ad_weight = rng.lognormal(0.0, AD_SERVING_SIGMA, total_ads)
    active = np.zeros(total_ads, dtype=bool)
    active[:active_ads] = True
    next_ad = active_ads

    n = days * impressions_per_day
    event_us = np.empty(n, dtype=np.int64)
    user_ids = np.empty(n, dtype=np.int64)
    ad_ids = np.empty(n, dtype=np.int64)
    devices = np.empty(n, dtype=np.int64)
    positions = np.empty(n, dtype=np.int64)
    logits = np.empty(n, dtype=np.float64)

    minute_cdf = _minute_cdf(start_us)
    for day in range(days):
        if day > 0:
            # Drift: a random-walk step on every logit, and some ads retired / new ones launched.
            user_propensity += rng.normal(0.0, DAILY_DRIFT_STD, users)
            ad_quality[:next_ad] += rng.normal(0.0, DAILY_DRIFT_STD, next_ad)
            retired = rng.choice(np.flatnonzero(active), size=min(turnover, active_ads), replace=False)
            active[retired] = False
            active[next_ad : next_ad + turnover] = True
            next_ad += turnover
        lo, hi = day * impressions_per_day, (day + 1) * impressions_per_day
        m = impressions_per_day

        # Event times: a minute of the day by the diurnal CDF, then a uniform microsecond in it.
        minute = np.searchsorted(minute_cdf, rng.random(m), side="right")
        offset = minute * _US_PER_MINUTE + rng.integers(0, _US_PER_MINUTE, m)
        event_us[lo:hi] = np.sort(start_us + day * 86_400_000_000 + offset)

        u = np.searchsorted(user_cdf, rng.random(m), side="right")
        active_ids = np.flatnonzero(active)
        a = active_ids[np.searchsorted(_cdf(ad_weight[active_ids]), rng.random(m), side="right")]
        device = np.where(rng.random(m) < PREFERRED_DEVICE_PROB, preferred_device[u], rng.integers(0, 3, m))
        slot = np.searchsorted(_cdf(POSITION_SHARE), rng.random(m), side="right")

        user_ids[lo:hi] = u
        ad_ids[lo:hi] = a
        devices[lo:hi] = device
        positions[lo:hi] = slot + 1
        hours = (event_us[lo:hi] // _US_PER_HOUR) % 24
        logits[lo:hi] = (
            user_propensity[u]
            + ad_quality[a]
            + _hour_effect(hours)
            + DEVICE_EFFECT[device]
            + POSITION_EFFECT[slot]
        )

    bias = _solve_bias(logits, TARGET_CTR)
    clicked = (rng.random(n) < _sigmoid(logits + bias)).astype(np.int64)
    hour = (event_us // _US_PER_HOUR) % 24

    return pa.Table.from_arrays(
        [
            pa.array(event_us, type=pa.int64()).cast(SCHEMA.field("event_time").type),
            pa.array(user_ids),
            pa.array(ad_ids),
            pa.array(hour),
            pa.array(devices),
            pa.array(positions),
            pa.array(clicked),
        ],
        schema=SCHEMA,
    )


# --- helpers ---------------------------------------------------------------------------------


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise Invalid(
            f"{name} must be a positive int, got {value!r} ({type(value).__name__}); pass e.g. {name}=7"
        )
    if value < 1:
        raise Invalid(f"{name} must be a positive int (>= 1), got {value}; pass a value of at least 1")
    return int(value)


def _seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise Invalid(f"seed must be an int, got {value!r} ({type(value).__name__}); pass e.g. seed=0")
    if value < 0:
        raise Invalid(f"seed must be a non-negative int, got {value}; pass e.g. seed=0")
    return int(value)


def _start_us(start: object) -> int:
    """Microseconds since the Unix epoch of ``start`` (naive = UTC, aware = converted to UTC)."""
    if start is None:
        start = DEFAULT_START
    if not isinstance(start, datetime):
        raise Invalid(
            f"start must be a datetime, got {start!r} ({type(start).__name__}); "
            "pass e.g. start=datetime(2026, 1, 1, tzinfo=timezone.utc)"
        )
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    return (start - _EPOCH) // timedelta(microseconds=1)


def _cdf(weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Normalised cumulative weights; the last entry is forced to exactly 1.0."""
    cdf = np.cumsum(weights, dtype=np.float64)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def _hour_effect(hours: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    return HOUR_EFFECT_AMPLITUDE * np.cos(2 * np.pi * (hours - 21) / 24)


def _minute_cdf(start_us: int) -> npt.NDArray[np.float64]:
    """CDF over the 1440 minutes of a simulated day of the diurnal traffic density (UTC)."""
    minute_start = start_us + np.arange(_MINUTES_PER_DAY, dtype=np.int64) * _US_PER_MINUTE
    utc_hour = ((minute_start + _US_PER_MINUTE // 2) % 86_400_000_000) / _US_PER_HOUR
    return _cdf(1.0 + TRAFFIC_AMPLITUDE * np.cos(2 * np.pi * (utc_hour - 19) / 24))


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_bias(logits: npt.NDArray[np.float64], target: float) -> float:
    """The ``b`` with ``mean(sigmoid(b + logits)) == target`` (safeguarded Newton)."""
    z = logits[:: max(1, logits.size // 500_000)]  # an evenly spaced subsample is plenty
    lo, hi = -30.0 - float(z.max()), 30.0 - float(z.min())
    b = float(np.log(target / (1 - target)) - z.mean())
    for _ in range(50):
        p = _sigmoid(b + z)
        f = float(p.mean()) - target
        if abs(f) < 1e-9:
            break
        if f > 0:
            hi = b
        else:
            lo = b
        slope = float((p * (1 - p)).mean())
        step = b - f / slope if slope > 0 else (lo + hi) / 2
        b = step if lo < step < hi else (lo + hi) / 2
    return b
