#!/usr/bin/env python3
"""Drives a headless Chromium over the DevTools protocol, for the status
page test (tests/status.rs): a real browser loads the page and runs its
script, and the test asks it what the page shows.

Usage: cdp.py CHROMIUM PROFILE_DIR URL

Chromium runs headless with PROFILE_DIR as its profile, home and temp
directory (the caller creates and removes it), talking over a pipe
(--remote-debugging-pipe: requests on fd 3, answers on fd 4, each a JSON
message ended by a NUL byte), so no port is opened. It opens URL at a
desktop size, then answers commands, one JSON object a line on stdin, with
one JSON line on stdout ({"ok": VALUE} or {"error": TEXT}):

  {"cmd": "eval", "expr": JS}                  the value of JS (awaited)
  {"cmd": "viewport", "width": W, "height": H, "mobile": BOOL}
  {"cmd": "shot", "path": PNG}                 a full-page screenshot

Chromium runs at the lowest CPU priority (nice 19). At end of input (or
when this script dies: Chromium gets SIGKILL from the kernel then) the
browser and every process it started are killed.
Standard library only.
"""

import base64
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

TIMEOUT = 20.0


class Browser:
    def __init__(self, chromium, profile):
        self.profile = profile
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        env = dict(os.environ)
        for var in ("HOME", "TMPDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
            env[var] = profile
        for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env.pop(var, None)
        args = [
            chromium,
            "--headless",
            "--no-sandbox",  # root in a network namespace
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--user-data-dir=" + profile,
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--disable-extensions",
            "--disable-sync",
            "--disable-component-update",
            "--disable-background-networking",
            "--disable-default-apps",
            "--disable-dev-shm-usage",
            "--password-store=basic",
            "--use-mock-keychain",
            "--mute-audio",
            "--hide-scrollbars",
            # The page polls every second: no throttling of its timers.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "about:blank",
        ]

        def child_setup():
            # fds 3 and 4 for the protocol (by way of copies above them, in
            # case the pipes are 3 and 4 the wrong way round); every other
            # descriptor of this script is close-on-exec. SIGKILL if this
            # script dies.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child_r, from_child_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            # Lowest CPU priority: the lab's link emulators and mpbond share
            # the machine's few cores with it, and a stalled emulator looks
            # like a failing line; the page may take its time.
            os.nice(19)

        self.proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(profile, "chromium.log"), "wb"),
            stderr=subprocess.STDOUT,
            close_fds=False,
            preexec_fn=child_setup,
            start_new_session=True,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.buf = b""
        self.next_id = 0
        self.session = None

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.viewport(1280, 900, False)
        self.call("Page.navigate", {"url": url})

    def call(self, method, params=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self.to_child, data)
            data = data[n:]
        deadline = time.monotonic() + TIMEOUT
        while True:
            while b"\0" not in self.buf:
                if time.monotonic() > deadline:
                    raise RuntimeError(method + ": no answer from Chromium in %.0f s" % TIMEOUT)
                chunk = os.read(self.from_child, 1 << 16)
                if not chunk:
                    raise RuntimeError(method + ": Chromium closed the pipe (see chromium.log)")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") != self.next_id:
                continue  # an event
            if "error" in answer:
                raise RuntimeError(method + ": " + answer["error"].get("message", str(answer["error"])))
            return answer.get("result", {})

    def viewport(self, width, height, mobile):
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": width,
            "height": height,
            "deviceScaleFactor": 2 if mobile else 1,
            "mobile": mobile,
        })

    def eval(self, expr):
        result = self.call("Runtime.evaluate", {
            "expression": expr,
            "returnByValue": True,
            "awaitPromise": True,
        })
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError("page script failed: " + str(text))
        return result.get("result", {}).get("value")

    def shot(self, path):
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        data = self.call("Page.captureScreenshot", {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        })["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return {"width": size["width"], "height": size["height"]}

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def main():
    chromium, profile, url = sys.argv[1:4]
    browser = None
    try:
        browser = Browser(chromium, profile)
        browser.open(url)
        print(json.dumps({"ok": "started"}), flush=True)
        for line in sys.stdin:
            try:
                cmd = json.loads(line)
                kind = cmd.get("cmd")
                if kind == "eval":
                    value = browser.eval(cmd["expr"])
                elif kind == "viewport":
                    value = browser.viewport(cmd["width"], cmd["height"], cmd.get("mobile", False))
                elif kind == "shot":
                    value = browser.shot(cmd["path"])
                else:
                    raise RuntimeError("unknown command %r" % kind)
                print(json.dumps({"ok": value}), flush=True)
            except (RuntimeError, KeyError, ValueError) as e:
                print(json.dumps({"error": str(e)}), flush=True)
    except Exception as e:  # the start failed: say why, once
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}), flush=True)
    finally:
        if browser is not None:
            browser.close()


if __name__ == "__main__":
    main()
