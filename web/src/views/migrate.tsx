// Live migration to another daemon, with its progress while it runs and
// its result.

import { useEffect, useState } from "preact/hooks";
import { api, type Migration } from "../api";
import { bytes, ms } from "../format";
import { ErrorLine, Section, useAction } from "./common";

/** How far the memory copy is, 0..1: pages sent in the first round, then the share not dirty. */
export function progress(m: Migration): number {
  if (m.state === "completed") return 1;
  if (!m.total_bytes) return 0;
  const done = m.rounds === 0 ? m.memory_sent_bytes : m.total_bytes - m.remaining_bytes;
  return Math.max(0, Math.min(1, done / m.total_bytes));
}

export function MigrationBar({ m }: { m: Migration }) {
  const p = progress(m);
  const final = m.state === "completed" || m.state === "failed" || m.state === "cancelled";
  return (
    <div class="migration" data-test="migration" data-state={m.state}>
      <div class="bar"><div class={`fill st-${m.state}`} style={{ width: `${(p * 100).toFixed(1)}%` }} data-test="bar" data-progress={p.toFixed(3)} /></div>
      <div class="mig-figures">
        <span><b>{(p * 100).toFixed(0)}%</b> {m.state}</span>
        <span>{bytes(m.transferred_bytes)} on the wire</span>
        <span>{bytes(m.memory_sent_bytes)} of {bytes(m.total_bytes)} memory sent</span>
        <span>round {m.rounds}</span>
        {!final && <span>expected downtime {ms(m.expected_downtime_ms)}</span>}
        {m.downtime_ms !== null && <span data-test="downtime">downtime {ms(m.downtime_ms)}</span>}
        {m.total_ms !== null && <span>total {ms(m.total_ms)}</span>}
      </div>
      {m.error && <div class="error" role="alert">{m.error}</div>}
    </div>
  );
}

export function Migrate({ vm, live, onChange }: { vm: string; live: boolean; onChange: () => void }) {
  const [to, setTo] = useState(localStorage.getItem("tern.migrate.to") ?? "");
  const [tok, setTok] = useState("");
  const [m, setM] = useState<Migration | null>(null);
  const [run, busy, error] = useAction();
  useEffect(() => {
    if (!m || !["pending", "running"].includes(m.state)) return;
    const t = setTimeout(() => api.migration(m.id).then((n) => { setM(n); if (n.state !== m.state) onChange(); }, () => {}), 200);
    return () => clearTimeout(t);
  }, [m]);
  const submit = (e: SubmitEvent) => {
    e.preventDefault();
    localStorage.setItem("tern.migrate.to", to);
    run(async () => setM(await api.migrate(vm, to, tok)));
  };
  const dest = m?.state === "completed" && /^https?:/.test(m.peer) ? m.peer : null;
  return (
    <Section title="Live migration">
      <form class="row" onSubmit={submit} data-test="migrate-form">
        <input name="to" placeholder="http://HOST:PORT or unix:/path/ternd.sock" value={to} required size={34} onInput={(e) => setTo(e.currentTarget.value)} />
        <input name="dest-token" type="password" placeholder="its token (TCP)" value={tok} onInput={(e) => setTok(e.currentTarget.value)} />
        <button type="submit" class="primary" disabled={busy || !live || (m !== null && ["pending", "running"].includes(m.state))}>Migrate</button>
      </form>
      <ErrorLine error={error} />
      {m && <MigrationBar m={m} />}
      {dest && (
        <p data-test="migrated">The VM runs on <a href={new URL(`/#/vms/${encodeURIComponent(vm)}`, dest).href}>{dest}</a> now.</p>
      )}
    </Section>
  );
}
