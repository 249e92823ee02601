"""What the process counts, for `GET /metrics` (Prometheus text format, through prometheus_client).

Counters live here, at module level, as prometheus_client intends; gauges that describe the ledger
(quota left, reservations in flight) are read from it at scrape time by `bots/http.py`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("iobot_requests", "Requests answered, by platform, command and outcome", ["platform", "command", "outcome"])
API_LATENCY = Histogram(
    "iobot_api_latency_seconds",
    "Time to the IO Intelligence API's response headers, per attempt",
    ["endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
API_RETRIES = Counter("iobot_api_retries", "API requests retried after a 429, 5xx or connection failure", ["endpoint"])
TOKENS = Counter("iobot_tokens", "Tokens charged, by model and kind (prompt or completion)", ["model", "kind"])
IMAGES_REFUSED = Counter("iobot_images_refused", "Images refused, by reason", ["reason"])
DOCUMENTS_REFUSED = Counter("iobot_documents_refused", "Text files and PDFs refused, by reason", ["reason"])
IMAGE_BYTES_SAVED = Counter("iobot_image_bytes_saved", "Bytes saved by normalising images before upload")

# Set from the ledger when /metrics is scraped (prometheus_client collectors cannot await).
QUOTA_REMAINING = Gauge("iobot_quota_remaining_tokens", "Tokens left today of each model's daily API quota", ["model"])
RESERVATIONS_IN_FLIGHT = Gauge("iobot_reservations_in_flight", "Ledger reservations held by calls still running")
