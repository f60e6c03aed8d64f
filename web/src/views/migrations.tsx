import { useEffect, useState } from "preact/hooks";
import { api, type Migration } from "../api";
import { bytes, ms } from "../format";
import { Section } from "./common";
import { progress } from "./migrate";

export function MigrationsView() {
  const [list, setList] = useState<Migration[]>([]);
  useEffect(() => {
    const load = () => api.migrations().then(setList, () => {});
    load();
    const t = setInterval(load, 1000);
    return () => clearInterval(t);
  }, []);
  return (
    <div class="view" data-test="migrations-view">
      <h1>Migrations</h1>
      <Section title="On this host">
        <table class="list">
          <thead><tr><th>VM</th><th>Direction</th><th>Peer</th><th>State</th><th>Progress</th><th>Wire</th><th>Rounds</th><th>Downtime</th><th>Total</th></tr></thead>
          <tbody>
            {list.map((m) => (
              <tr>
                <td>{m.vm}</td><td>{m.direction}</td><td><code>{m.peer}</code></td>
                <td><span class={`badge mig-${m.state}`}>{m.state}</span>{m.error && <div class="error">{m.error}</div>}</td>
                <td><div class="bar small"><div class={`fill st-${m.state}`} style={{ width: `${progress(m) * 100}%` }} /></div></td>
                <td class="num">{bytes(m.transferred_bytes)}</td><td class="num">{m.rounds}</td>
                <td class="num">{ms(m.downtime_ms)}</td><td class="num">{ms(m.total_ms)}</td>
              </tr>
            ))}
            {list.length === 0 && <tr><td colSpan={9} class="muted">No migrations since the daemon started.</td></tr>}
          </tbody>
        </table>
      </Section>
    </div>
  );
}
