"""What the server counts, in Prometheus' text format, under the names vLLM's users look for.

Requests running and waiting, requests per prompt, prompt and generated tokens, failures by
kind, forward time by phase, time to first token, queue wait, latency, prefix-cache hits. Each
app has its own registry, so several servers (or tests) in one process never share counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("softprompt_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram("softprompt_request_seconds", "request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_requests = Counter("softprompt_prompt_requests", "inference requests by prompt (model name)", ["prompt"],
                                       registry=r)
        self.running = Gauge("softprompt_num_requests_running", "sequences generating now", registry=r)
        self.waiting = Gauge("softprompt_num_requests_waiting", "examples queued, not yet started", registry=r)
        self.failures = Counter("softprompt_request_failures", "jobs that ended in an error, by kind", ["kind"], registry=r)
        self.prompt_tokens = Counter("softprompt_prompt_tokens", "input tokens read (prefill)", registry=r)
        self.generated_tokens = Counter("softprompt_generation_tokens", "tokens generated", registry=r)
        self.forward_seconds = Histogram("softprompt_forward_seconds", "model forward time by phase (rank, prefill, decode)",
                                         ["phase"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("softprompt_time_to_first_token_seconds", "from arrival to the first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.batch_examples = Histogram("softprompt_batch_examples", "examples per forward", buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("softprompt_queue_wait_seconds", "time a request waited before its batch ran",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.trim_seconds = Histogram("softprompt_memory_trim_seconds", "time handing freed memory back to the OS (malloc_trim)",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.prompts_loaded = Gauge("softprompt_prompts_loaded", "prompts in the bank", registry=r)
        self.cache_bytes = Gauge("softprompt_prompt_cache_bytes", "bytes of prompt keys/values kept between batches", registry=r)
        self.cache_entries = Gauge("softprompt_prompt_cache_entries", "prompts whose keys/values are kept", registry=r)
        self.cache_hits = Gauge("softprompt_prefix_cache_hits", "prompt-state lookups served from the cache", registry=r)
        self.cache_misses = Gauge("softprompt_prefix_cache_misses", "prompt-state lookups that were computed", registry=r)

    def observe_cache(self, cache) -> None:
        """Copy the prefix cache's counts (None: this backbone keeps none)."""
        if cache is None:
            return
        self.cache_bytes.set(cache.nbytes)
        self.cache_entries.set(len(cache))
        self.cache_hits.set(cache.hits)
        self.cache_misses.set(cache.misses)

    def text(self) -> bytes:
        return generate_latest(self.registry)
