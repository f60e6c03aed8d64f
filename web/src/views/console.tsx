// The VM's serial console: xterm.js over the console WebSocket.

import { useEffect, useRef, useState } from "preact/hooks";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { consoleSocket } from "../api";

export function Console({ vm, live }: { vm: string; live: boolean }) {
  const box = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState("connecting");
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    if (!live || !box.current) {
      setStatus("no worker: start the VM");
      return;
    }
    const term = new Terminal({
      convertEol: true,
      cursorBlink: true,
      fontSize: 13,
      rows: 18,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
      theme: { background: "#10151c", foreground: "#d8dee9" },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box.current);
    fit.fit();
    const onResize = () => fit.fit();
    addEventListener("resize", onResize);
    const ws = consoleSocket(vm);
    const enc = new TextEncoder();
    ws.onopen = () => setStatus("connected");
    ws.onmessage = (m) => term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data as ArrayBuffer));
    ws.onclose = (e) => setStatus(e.reason ? `closed: ${e.reason}` : "closed");
    ws.onerror = () => setStatus("cannot connect");
    const input = term.onData((d) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
    });
    return () => {
      input.dispose();
      ws.close();
      term.dispose();
      removeEventListener("resize", onResize);
    };
  }, [vm, live, attempt]);

  return (
    <div class="console">
      <div class="console-head">
        <span class={`chip ${status === "connected" ? "on" : "off"}`} data-test="console-status">{status}</span>
        {live && status !== "connected" && status !== "connecting" && (
          <button class="ghost small" onClick={() => setAttempt(attempt + 1)}>Reconnect</button>
        )}
      </div>
      <div class="term" ref={box} data-test="console" />
    </div>
  );
}
