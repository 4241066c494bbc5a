"""ONNX Runtime sessions: provider choice, the checks on what was really granted, and the
load-time graph rewrite that makes the ArcFace recognizer fast on small CPUs.

This is where model files enter ONNX Runtime and the ``onnx`` library. Neither raises
anything the agent knows (ONNX Runtime's ``Fail``, ``InvalidGraph``, ``InvalidProtobuf``,
``NoSuchFile``... all derive straight from ``Exception``), so every failure here is
translated into :class:`~agent.errors.ModelPackError` naming the file and what the library
said.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from agent.errors import ModelPackError

log = logging.getLogger(__name__)

ERROR_TEXT_LIMIT = 300  # characters of a library's message kept in a reason

# ONNX Runtime wraps the useful sentence in a status prefix, the file path (the reason
# names the file already) and the C++ source location; a technician needs none of them.
_ORT_STATUS = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ")
_ORT_LOAD_FROM = re.compile(r"Load model from .*? failed: ?")
_CPP_LOCATION = re.compile(r"\S+\.(?:cc|cpp|h):\d+\s+(?:[\w:~<>]+\([^)]*\)\s*)?")


def describe_error(exc: BaseException, limit: int = ERROR_TEXT_LIMIT) -> str:
    """One line saying what a library reported, short enough for a status reply.

    ONNX Runtime messages keep their status name (``FAIL: Missing opset in the model``);
    other exceptions are prefixed by their type (``DecodeError: Error parsing message``).
    """
    text = " ".join(str(exc).split())
    status = _ORT_STATUS.match(text)
    if status is not None:
        text = _CPP_LOCATION.sub("", _ORT_LOAD_FROM.sub("", text[status.end() :]))
        text = f"{status.group(1)}: {text}"
    else:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


@dataclass(frozen=True)
class ProviderReport:
    """What was asked of ONNX Runtime and what it actually runs on."""

    requested: tuple[str, ...]
    active: tuple[str, ...]

    @property
    def degraded(self) -> bool:
        """True when the preferred provider was not granted (e.g. CUDA asked, CPU running)."""
        return bool(self.requested) and (not self.active or self.active[0] != self.requested[0])

    def warning(self) -> str | None:
        """A human sentence for status and logs when degraded, else None."""
        if not self.degraded:
            return None
        return (
            f"requested {self.requested[0]}, running on "
            f"{self.active[0] if self.active else 'nothing'}"
        )


def rewrite_prelu_as_max(model: onnx.ModelProto) -> int:
    """Replace each ``PRelu(x, a)`` whose slopes are all <= 1 by ``Max(x, a * x)``.

    For a <= 1 the two are equal for every x (x >= 0: a*x <= x; x < 0: a*x >= x), so the
    embeddings are unchanged, but ONNX Runtime's CPU PRelu kernel is slow. Nodes whose slope
    is not a constant initializer, or has a slope > 1, are left alone. Returns the count.
    """
    slopes = {init.name: init for init in model.graph.initializer}
    new_nodes = []
    rewritten = 0
    for node in model.graph.node:
        slope = slopes.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope is None or float(np.max(numpy_helper.to_array(slope))) > 1.0:
            new_nodes.append(node)
            continue
        scaled = f"{node.output[0]}__prelu_scaled"
        new_nodes.append(
            helper.make_node(
                "Mul", [node.input[0], node.input[1]], [scaled], name=f"{node.name}_mul"
            )
        )
        new_nodes.append(
            helper.make_node(
                "Max", [node.input[0], scaled], [node.output[0]], name=f"{node.name}_max"
            )
        )
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return rewritten


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """Session options measured best on small CPUs (see docs/benchmarks.md)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if intra_op_threads > 1:
        # Spinning pools of two sessions fight over the same cores (measured).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _provider_options(provider: str, tensorrt_cache: Path | None) -> dict[str, Any]:
    """Options per provider: TensorRT keeps its built engines (minutes to build on a
    Jetson) in a cache folder so restarts and reloads reuse them."""
    if provider == "TensorrtExecutionProvider" and tensorrt_cache is not None:
        tensorrt_cache.mkdir(parents=True, exist_ok=True)
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(tensorrt_cache),
            "trt_fp16_enable": True,
        }
    return {}


def create_session(
    path: Path,
    data: bytes,
    providers: tuple[str, ...],
    intra_op_threads: int,
    *,
    optimize_prelu: bool = False,
    tensorrt_cache: Path | None = None,
    pack: str | None = None,
) -> tuple[ort.InferenceSession, ProviderReport]:
    """Build an inference session from ``data`` (the verified bytes of ``path``, which names
    it in messages; the file is not read again) and report which providers it got.

    Providers not compiled into this ONNX Runtime build are dropped before the session is
    built (with a warning) and the CPU provider is always the last resort. Any failure to
    read, rewrite or load the file raises :class:`ModelPackError` for ``pack`` (default:
    the name of the folder holding the file), chained to the library's exception.
    """
    pack_name = pack or path.parent.name
    available = set(ort.get_available_providers())
    usable = [p for p in providers if p in available]
    if "CPUExecutionProvider" not in usable:
        usable.append("CPUExecutionProvider")
    missing = [p for p in providers if p not in available]
    if missing:
        log.warning(
            "ONNX_PROVIDER_UNAVAILABLE model=%s missing=%s available=%s",
            path.name,
            ",".join(missing),
            ",".join(sorted(available)),
        )
    source = data
    if optimize_prelu:
        try:
            model = onnx.load_model_from_string(data)
            count = rewrite_prelu_as_max(model)
            if count:
                source = model.SerializeToString()
                log.debug("PRELU_REWRITTEN model=%s nodes=%d", path.name, count)
        except Exception as exc:
            # DecodeError, missing external data, odd graphs: the onnx library has no
            # common base class for them.
            raise ModelPackError(
                pack_name,
                f"the onnx library could not read {path.name} for the PRelu rewrite: "
                f"{describe_error(exc)}",
            ) from exc
    with_options: list[str | tuple[str, dict[str, Any]]] = []
    for provider in usable:
        try:
            options = _provider_options(provider, tensorrt_cache)
        except OSError as exc:
            raise ModelPackError(
                pack_name,
                f"the TensorRT engine cache folder {tensorrt_cache} is not usable: "
                f"{describe_error(exc)}",
            ) from exc
        with_options.append((provider, options) if options else provider)
    try:
        session = ort.InferenceSession(
            source, sess_options=session_options(intra_op_threads), providers=with_options
        )
        active = tuple(session.get_providers())
    except Exception as exc:
        # ONNX Runtime's exceptions (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile, ...)
        # all derive straight from Exception.
        raise ModelPackError(
            pack_name, f"ONNX Runtime could not load {path.name}: {describe_error(exc)}"
        ) from exc
    report = ProviderReport(requested=tuple(providers), active=active)
    if report.degraded:
        log.warning("ONNX_PROVIDER_DEGRADED model=%s %s", path.name, report.warning())
    return session, report
