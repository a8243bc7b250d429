# SPDX-License-Identifier: GPL-3.0-or-later
"""The C boundary: what Orthanc lends, the buffers and strings it reads, and the trampolines' error codes.

Each test drives a real Orthanc through routes of one script and checks what
a user sees: an error that names the fault and the fix, HTTP 500 with the
reason in the log, and an Orthanc that keeps serving.
"""

from __future__ import annotations

import io
import json
import time

import PIL.Image
import pytest

from orthanc_py.server import OrthancServer

from .dicom import make_dicom

SCRIPT = r'''
import gc
import json
import mmap
import threading
import time

import orthanc
from orthanc_py import on_stored_instance, rest, route

kept = {}


def outcome(action):
    """What a call did: {"ok": result} or {"error": type, "message": text}."""
    try:
        result = action()
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error),
                "runtime_error": isinstance(error, RuntimeError)}
    return {"ok": result if isinstance(result, (str, int, float, type(None))) else repr(result)}


# --- borrowed objects -----------------------------------------------------------------

@route("/lend/request", methods=["POST"])
def lend_request(request):
    kept["request"] = request  # read nothing here: nothing is cached

    def later():
        time.sleep(0.3)  # the handler has returned by then
        kept["thread"] = {name: outcome(lambda: getattr(request, name)) for name in ("body", "headers", "args")}

    threading.Thread(target=later).start()
    return "answered now, working in the background"


@route("/lend/request/copy", methods=["POST"])
def lend_request_copy(request):
    copy = request.detached()
    kept["copy"] = copy

    def later():
        time.sleep(0.3)
        kept["thread_copy"] = outcome(lambda: copy.body.decode())

    threading.Thread(target=later).start()
    return "copied"


@route("/lend/request/race", methods=["POST"])
def request_race(request):
    view = request._view  # what Request reads from (it caches each value): read it again and again

    def keep_reading():
        outcomes = kept.setdefault("request_race", {"ok": 0, "expired": 0, "other": [], "done": 0})
        for _ in range(2000):
            try:
                assert len(view.body) == 65536 and view.headers
                outcomes["ok"] += 1
            except RuntimeError:
                outcomes["expired"] += 1
                return
            except Exception as error:
                outcomes["other"].append(repr(error))
                return
        outcomes["done"] += 1

    started = threading.Event()
    threading.Thread(target=lambda: (started.set(), keep_reading())).start()
    started.wait()
    return "answered"


@route("/lend/request/race/outcomes")
def request_race_outcomes(request):
    return kept.get("request_race", {})


@route("/lend/request/later")
def request_later(request):
    r = kept["request"]
    return {"now": {name: outcome(lambda: getattr(r, name)) for name in ("body", "headers", "args", "groups")},
            "thread": kept.get("thread"), "thread_copy": kept.get("thread_copy"),
            "copy": {"body": kept["copy"].body.decode(), "args": kept["copy"].args,
                     "header": kept["copy"].headers.get("x-probe")}}


def keep_output(output, uri, **request):
    kept["output"] = output
    output.AnswerBuffer("kept", "text/plain")


orthanc.RegisterRestCallback("/lend/output", keep_output)


def answer_from_a_thread(output, uri, **request):
    # A common mistake: hand the output to a thread and return. The thread's calls
    # race with the end of the callback; each must succeed or raise, never touch freed memory.
    def keep_calling():
        outcomes = kept.setdefault("racing", {"ok": 0, "expired": 0, "other": [], "done": 0})
        for _ in range(2000):
            try:
                output.SetHttpErrorDetails("racing", 0)
                outcomes["ok"] += 1
            except RuntimeError:
                outcomes["expired"] += 1
                return
            except Exception as error:  # Orthanc refusing (answer already sent) is fine too
                outcomes["other"].append(type(error).__name__)
                return
        outcomes["done"] += 1

    started = threading.Event()
    threading.Thread(target=lambda: (started.set(), keep_calling())).start()
    started.wait()
    output.AnswerBuffer("answered", "text/plain")


orthanc.RegisterRestCallback("/lend/output/race", answer_from_a_thread)


@route("/lend/output/race/outcomes")
def race_outcomes(request):
    return kept.get("racing", {})


@route("/lend/output/later")
def output_later(request):
    output = kept["output"]
    return {"AnswerBuffer": outcome(lambda: output.AnswerBuffer("late", "text/plain")),
            "SetHttpHeader": outcome(lambda: output.SetHttpHeader("X-Late", "1")),
            "SendHttpStatusCode": outcome(lambda: output.SendHttpStatusCode(404))}


def keep_instance(instance, instance_id):
    kept["dicom"] = instance
    kept["dicom_size"] = instance.GetInstanceSize()


orthanc.RegisterOnStoredInstanceCallback(keep_instance)


@on_stored_instance
def keep_stored(instance):
    kept["stored"] = instance
    kept["stored_id"] = instance.id  # read during the handler: stays


@route("/lend/instance/later")
def instance_later(request):
    dicom, stored = kept["dicom"], kept["stored"]
    return {"GetInstanceSize": outcome(lambda: dicom.GetInstanceSize()),
            "GetInstanceData": outcome(lambda: len(dicom.GetInstanceData())),
            "simplified_json": outcome(lambda: stored.simplified_json),
            "data": outcome(lambda: len(stored.data)),
            "id": stored.id, "size_during_call": kept["dicom_size"]}


# --- buffers Orthanc reads ---------------------------------------------------------------

def short_png(output, uri, **request):
    output.CompressAndAnswerPngImage(orthanc.PixelFormat.GRAYSCALE8, 2048, 2048, 2048, b"x")


orthanc.RegisterRestCallback("/buffer/short-png", short_png)


def huge_answer(output, uri, **request):
    # 4 GiB + 1 of address space, never touched: the size check comes before any copy.
    huge = mmap.mmap(-1, 2**32 + 1)
    try:
        output.AnswerBuffer(memoryview(huge), "application/octet-stream")
    finally:
        huge.close()


orthanc.RegisterRestCallback("/buffer/huge-answer", huge_answer)


def transcode(dicom, allowed_syntaxes, allow_new_sop_instance_uid):
    if b"HUGE-TC" not in dicom:
        return None
    return memoryview(mmap.mmap(-1, 2**32 + 1))  # a 4 GiB + 1 result: its size does not fit 32 bits


orthanc.RegisterTranscoderCallback(transcode)


def decode(dicom, frame_index):
    if b"ACCESSOR-DEC" not in dicom:
        return None
    # An accessor over a temporary: Orthanc keeps the image, so it must get pixels of its own. At
    # 8 MiB the temporary is a memory map of its own, unmapped when freed: reading it would crash.
    row = bytes(range(256)) * 8 + b"\x4d"  # 2048 pixels and a padding byte
    return orthanc.CreateImageAccessor(orthanc.PixelFormat.GRAYSCALE8, 2048, 4096, 2049, row * 4096)


orthanc.RegisterDecodeImageCallback(decode)


@route("/buffer/checks")
def buffer_checks(request):
    gray8 = orthanc.PixelFormat.GRAYSCALE8
    rgb24 = orthanc.PixelFormat.RGB24
    return {
        "jpeg_short": outcome(lambda: orthanc.CompressJpegImage(gray8, 64, 64, 64, b"\0" * 100, 90)),
        "png_short_last_row": outcome(lambda: orthanc.CompressPngImage(gray8, 4, 4, 4, b"\0" * 15)),
        "png_pitch_below_row": outcome(lambda: orthanc.CompressPngImage(rgb24, 4, 2, 4, b"\0" * 100)),
        "png_exact": outcome(lambda: len(orthanc.CompressPngImage(gray8, 4, 4, 4, b"\0" * 16)) > 0),
        "png_unknown_format": outcome(lambda: orthanc.CompressPngImage(6, 1, 1, 1, b"\0")),
        "from_buffer_negative_pitch": outcome(lambda: orthanc.CreateImageFromBuffer(gray8, 4, 4, -4, b"\0" * 16)),
        "from_buffer_short": outcome(lambda: orthanc.CreateImageFromBuffer(gray8, 4, 4, 4, b"\0" * 15)),
        "from_buffer_exact": outcome(
            lambda: orthanc.CreateImageFromBuffer(gray8, 4, 2, 5, bytes(range(9))).GetImageBuffer().hex()),
        "accessor_short": outcome(lambda: orthanc.CreateImageAccessor(gray8, 8, 8, 8, bytearray(10))),
        "width_2_32": outcome(lambda: orthanc.CreateImage(gray8, 2**32, 1)),
        "negative_width": outcome(lambda: orthanc.CreateImage(gray8, -1, 1)),
        "quality_300": outcome(lambda: orthanc.CompressJpegImage(gray8, 1, 1, 1, b"\0", 300)),
        "rest_post_huge": outcome(lambda: orthanc.RestApiPost("/tools/find", memoryview(mmap.mmap(-1, 2**32)))),
    }


# --- buffers Orthanc keeps ----------------------------------------------------------------

@route("/accessor")
def accessor(request):
    gray8 = orthanc.PixelFormat.GRAYSCALE8
    results = {}
    # A temporary bytes: gone as soon as the call returns, unless the image keeps it.
    image = orthanc.CreateImageAccessor(gray8, 4, 4, 4, bytes(range(16)))
    gc.collect()
    junk = [bytes([255]) * 16 for _ in range(10000)]  # reuse freed memory, if any
    results["pixels_kept"] = image.GetImageBuffer() == bytes(range(16))
    del junk
    # Writing into the image must never write into an immutable bytes.
    blank = bytes(64 * 32)
    drawn = orthanc.CreateImageAccessor(gray8, 64, 32, 64, blank)
    drawn.DrawText(0, "Hi", 2, 2, 255, 255, 255)
    results["bytes_untouched"] = blank == bytes(64 * 32)
    results["image_drawn"] = any(drawn.GetImageBuffer())
    # A writable buffer is shared (an accessor), and locked against resizing while the image lives.
    shared = bytearray(64 * 32)
    on_shared = orthanc.CreateImageAccessor(gray8, 64, 32, 64, shared)
    on_shared.DrawText(0, "Hi", 2, 2, 255, 255, 255)
    results["bytearray_drawn"] = any(shared)
    results["resize_locked"] = outcome(lambda: shared.extend(b"x"))
    on_shared.close()
    shared.extend(b"x")  # free again once the image is closed
    results["resize_after_close"] = len(shared)
    return results


# --- strings -------------------------------------------------------------------------------

def headers_route(output, uri, **request):
    results = {
        "SetHttpHeader_value": outcome(lambda: output.SetHttpHeader("X-Echo", "a\r\nSet-Cookie: evil=1")),
        "SetHttpHeader_name": outcome(lambda: output.SetHttpHeader("X-Echo\nEvil", "a")),
        "SetCookie": outcome(lambda: output.SetCookie("session", "x\r\nX-Evil: 1")),
        "SetHttpHeader_nul": outcome(lambda: output.SetHttpHeader("X-Echo", "a\0b")),
        "mime": outcome(lambda: output.AnswerBuffer("x", "text/plain\r\nX-Evil: 1")),
    }
    output.SetHttpHeader("X-Fine", "yes")
    output.AnswerBuffer(json.dumps(results), "application/json")


orthanc.RegisterRestCallback("/strings/headers", headers_route)


@route("/strings/nul")
def nul(request):
    victim = request.args["id"]
    return {
        "RestApiDelete": outcome(lambda: orthanc.RestApiDelete(f"/studies/{victim}\0x")),
        "rest.delete": outcome(lambda: rest.delete(f"/studies/{victim}\0x")),
        "RestApiGet": outcome(lambda: orthanc.RestApiGet(f"/studies/{victim}\0")),
        "RestApiDelete_none": outcome(lambda: orthanc.RestApiDelete(None)),
        "HttpGet_none_user": outcome(lambda: orthanc.HttpGet("http://127.0.0.1:1/", None, None)),
    }
'''

FAILING_LOG_SCRIPT = r'''
import orthanc
from orthanc_py import _capi


def broken_report(where):
    raise RuntimeError("the log is broken too")


_capi.report_exception = broken_report  # what a failing log looks like to a trampoline


def refuse_all(uri, **request):
    if uri.startswith("/guarded"):
        raise ValueError("the filter fails")
    return True


orthanc.RegisterIncomingHttpRequestFilter(refuse_all)


def failing_route(output, uri, **request):
    raise ValueError("the route fails")


orthanc.RegisterRestCallback("/failing", failing_route)
orthanc.RegisterRestCallback("/guarded", failing_route)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("boundary")
    (workdir / "boundary.py").write_text(SCRIPT)
    orthanc = OrthancServer(str(workdir / "orthanc"), script=str(workdir / "boundary.py"))
    orthanc.start()
    yield orthanc
    assert orthanc.stop() == 0, "Orthanc stops cleanly after the tests"
    assert "Segmentation" not in orthanc.log


def expired(outcome: dict) -> str:
    assert outcome.get("runtime_error"), outcome
    return outcome["message"]


def test_a_request_used_after_its_handler_raises_and_detached_copies_work(server):
    for path in ("/lend/request", "/lend/request/copy"):
        answer = server.request("POST", path + "?name=J%C3%B6rg", b"the body", headers={"X-Probe": "probe"})
        assert answer.status == 200
    time.sleep(0.6)  # the background thread reads the request meanwhile
    seen = server.get_json("/lend/request/later")
    for name in ("body", "headers", "args", "groups"):
        message = expired(seen["now"][name])
        assert "request.detached()" in message and "handler returned" in message
    for name in ("body", "headers", "args"):
        assert "request.detached()" in expired(seen["thread"][name])
    assert seen["thread_copy"] == {"ok": "the body"}
    assert seen["copy"]["body"] == "the body" and seen["copy"]["header"] == "probe"
    assert server.get("/system").status == 200


def test_a_thread_racing_the_end_of_the_handler_never_reads_a_freed_request(server):
    for _ in range(40):
        assert server.request("POST", "/lend/request/race", b"r" * 65536).text == "answered"
    outcomes = server.wait_until(
        lambda: (lambda o: o if o["expired"] + len(o["other"]) + o["done"] == 40 else None)(
            server.get_json("/lend/request/race/outcomes")), timeout=20, what="every reading thread stopped")
    assert outcomes["other"] == [], outcomes
    assert outcomes["expired"] > 0, outcomes
    assert server.get("/system").status == 200


def test_a_rest_output_used_after_its_callback_raises(server):
    assert server.get("/lend/output").text == "kept"
    seen = server.get_json("/lend/output/later")
    for name in ("AnswerBuffer", "SetHttpHeader", "SendHttpStatusCode"):
        message = expired(seen[name])
        assert "RestOutput" in message and "answer the request before the callback returns" in message
    assert server.get("/system").status == 200


def test_a_thread_racing_the_end_of_the_callback_never_touches_a_freed_output(server):
    for _ in range(40):
        assert server.get("/lend/output/race").text == "answered"
    outcomes = server.wait_until(
        lambda: (lambda o: o if o["expired"] + len(o["other"]) + o["done"] == 40 else None)(
            server.get_json("/lend/output/race/outcomes")), timeout=20, what="every racing thread stopped")
    assert outcomes["other"] == [], outcomes  # each thread ended on the clear error, never on Orthanc's
    assert outcomes["expired"] > 0, outcomes  # the race did happen
    assert server.get("/system").status == 200


def test_an_instance_used_after_its_callback_raises(server):
    uploaded = server.upload(make_dicom(patient_id="LENT"))
    seen = server.get_json("/lend/instance/later")
    assert seen["id"] == uploaded["ID"] and seen["size_during_call"] > 0
    assert "DicomInstance" in expired(seen["GetInstanceSize"])
    assert "GetInstanceData()" in expired(seen["GetInstanceData"])
    for name in ("simplified_json", "data"):
        message = expired(seen[name])
        assert f"StoredInstance ({uploaded['ID']})" in message and "while the handler runs" in message
    assert server.get("/system").status == 200


def test_a_short_image_buffer_answers_500_and_the_log_says_why(server):
    answer = server.get("/buffer/short-png")
    assert answer.status == 500
    assert "Traceback" not in answer.text
    server.wait_for_log(r"CompressAndAnswerPngImage\(\): buffer holds 1 bytes, but 2048 rows of pitch 2048 need "
                        r"4194304 bytes")
    assert server.get("/system").status == 200


def test_a_body_past_32_bits_is_refused_before_any_copy(server):
    assert server.get("/buffer/huge-answer").status == 500
    server.wait_for_log(r"argument 'answer' holds 4294967297 bytes, more than Orthanc can take here "
                        r"\(4294967295 bytes")
    assert server.get("/system").status == 200


def test_a_transcoder_result_past_32_bits_is_refused_and_orthanc_transcodes_itself(server):
    instance = server.upload(make_dicom(patient_id="HUGE-TC"))["ID"]
    answer = server.post(f"/instances/{instance}/modify", json.dumps({"Transcode": "1.2.840.10008.1.2"}))
    assert answer.status == 200, answer.text  # Orthanc's own transcoder took over
    server.wait_for_log(r"returned 4294967297 bytes; Orthanc takes at most 4294967295 \(a 32-bit size\)")
    assert server.get("/system").status == 200


def test_every_image_size_is_checked_before_orthanc_reads(server):
    seen = server.get_json("/buffer/checks")
    errors = {name: result for name, result in seen.items() if "error" in result}
    assert set(errors) == set(seen) - {"png_exact", "from_buffer_exact"}, seen
    assert seen["png_exact"] == {"ok": True}
    # 2 rows of 4 pixels, 5 bytes apart: the padding byte of each row is skipped.
    assert seen["from_buffer_exact"] == {"ok": "0001020305060708"}
    for name, result in errors.items():
        assert result["error"] == "ValueError", (name, result)
    assert "buffer holds 100 bytes, but 64 rows of pitch 64 need 4096 bytes" in seen["jpeg_short"]["message"]
    assert "buffer holds 15 bytes, but 4 rows of pitch 4 need 16 bytes" in seen["png_short_last_row"]["message"]
    assert (
        "pitch is 4 bytes, less than a row of 4 pixels of 3 byte(s) (12 bytes)"
        in seen["png_pitch_below_row"]["message"]
    )
    assert "format 6 is not a pixel format whose size is known" in seen["png_unknown_format"]["message"]
    assert (
        "argument 'pitch' is -4, out of the range of its C type uint32_t"
        in seen["from_buffer_negative_pitch"]["message"]
    )
    assert "buffer holds 15 bytes" in seen["from_buffer_short"]["message"]
    assert "buffer holds 10 bytes, but 8 rows of pitch 8 need 64 bytes" in seen["accessor_short"]["message"]
    assert "argument 'width' is 4294967296, out of the range of its C type uint32_t: 0 to 4294967295" in (
        seen["width_2_32"]["message"])
    assert "argument 'width' is -1" in seen["negative_width"]["message"]
    assert (
        "argument 'quality' is 300, out of the range of its C type uint8_t: 0 to 255" in seen["quality_300"]["message"]
    )
    assert "argument 'body' holds 4294967296 bytes" in seen["rest_post_huge"]["message"]


def test_an_image_accessor_owns_its_pixels_and_never_writes_into_bytes(server):
    seen = server.get_json("/accessor")
    assert seen["pixels_kept"] is True
    assert seen["bytes_untouched"] is True and seen["image_drawn"] is True
    assert seen["bytearray_drawn"] is True
    assert seen["resize_locked"]["error"] == "BufferError"
    assert seen["resize_after_close"] == 64 * 32 + 1


def test_an_accessor_image_handed_to_orthanc_brings_its_pixels(server):
    instance = server.upload(make_dicom(patient_id="ACCESSOR-DEC", rows=8, cols=8))["ID"]
    for _ in range(3):  # decoded anew each time: freed pixels would show as garbage
        png = server.get(f"/instances/{instance}/frames/0/image-uint8", headers={"Accept": "image/png"})
        assert png.status == 200, png.text
        image = PIL.Image.open(io.BytesIO(png.body))
        assert image.size == (2048, 4096)
        assert image.tobytes() == bytes(range(256)) * 8 * 4096


def test_line_breaks_in_header_text_raise_and_the_answer_goes_out_clean(server):
    answer = server.get("/strings/headers")
    assert answer.status == 200
    seen = answer.json()
    for name in ("SetHttpHeader_value", "SetHttpHeader_name", "SetCookie", "mime"):
        assert seen[name]["error"] == "ValueError", (name, seen[name])
        assert "line break (CR or LF)" in seen[name]["message"]
    assert seen["SetHttpHeader_nul"]["error"] == "ValueError"
    headers = {name.lower(): value for name, value in answer.headers.items()}
    assert headers.get("x-fine") == "yes"
    assert "x-evil" not in headers and "evil" not in headers.get("set-cookie", "")


def test_nul_in_a_string_raises_instead_of_acting_on_another_resource(server):
    study = server.upload(make_dicom(patient_id="NUL"))["ParentStudy"]
    seen = server.get_json(f"/strings/nul?id={study}")
    for name in ("RestApiDelete", "rest.delete", "RestApiGet"):
        assert seen[name]["error"] == "ValueError", (name, seen[name])
        assert "NUL character" in seen[name]["message"]
    assert seen["RestApiDelete_none"]["error"] == "TypeError"
    # NULL is fine where the header says so (no credentials): Orthanc tries, and fails to connect.
    assert seen["HttpGet_none_user"].get("error") not in ("TypeError", "ValueError"), seen["HttpGet_none_user"]
    assert server.get(f"/studies/{study}").status == 200, "the study is still there"


def test_a_trampoline_returns_its_error_code_when_reporting_fails(make_orthanc):
    server = make_orthanc(FAILING_LOG_SCRIPT)
    # The filter fails and so does its report: the request is still refused with Orthanc's error (500).
    assert server.get("/guarded/x").status == 500
    assert server.get("/failing").status == 500
    assert server.get("/system").status == 200
    assert "Exception ignored on calling ctypes callback" not in server.log



EMPTY_SCRIPT = """
import orthanc
from orthanc_py import rest, route

@route("/empty")
def empty(request):
    return ""

@route("/probe")
def probe(request):
    return {
        "memory buffer of 0 bytes": repr(orthanc.CreateMemoryBuffer(0)),
        "empty answer, orthanc module": repr(orthanc.RestApiGetAfterPlugins("/empty")),
        "empty answer, rest": repr(rest.get("/empty", plugins=True)),
        "absent property": repr(orthanc.GetGlobalProperty(5123, "")),
    }
"""


def test_empty_buffers_and_texts_from_orthanc_come_back_empty(make_orthanc):
    # Orthanc leaves the data of an empty memory buffer NULL: the copy is empty bytes, not an error.
    server = make_orthanc(EMPTY_SCRIPT)
    answer = server.get("/probe")
    assert answer.status == 200, server.log[-2000:]
    assert answer.json() == {"memory buffer of 0 bytes": "b''", "empty answer, orthanc module": "b''",
                             "empty answer, rest": "b''", "absent property": "''"}
