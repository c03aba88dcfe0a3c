"""The capture layer: every model call recorded, searched, exported, replayed; also as a proxy."""

from lang_agent.capture.detect import RepeatConfig, RepeatDetector
from lang_agent.capture.merge import CompletionMerger, merge_chunks, merge_sse
from lang_agent.capture.metrics import Metrics
from lang_agent.capture.predicate import PredicateError, compile_predicate
from lang_agent.capture.query import CallFilter
from lang_agent.capture.record import CallRecord, redact_headers
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.stream import CapturingStream
from lang_agent.capture.transport import CapturingTransport

__all__ = [
    "CallFilter",
    "CallRecord",
    "CapturingStream",
    "CapturingTransport",
    "CompletionMerger",
    "Metrics",
    "PredicateError",
    "Recorder",
    "RepeatConfig",
    "RepeatDetector",
    "compile_predicate",
    "merge_chunks",
    "merge_sse",
    "redact_headers",
]
