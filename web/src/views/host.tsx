import type { Data } from "../app";
import { bytes, seconds, when } from "../format";
import { sum } from "../metrics";
import { Figure, Section } from "./common";

export function HostView({ data }: { data: Data }) {
  const h = data.host;
  const s = data.samples;
  const running = data.vms.filter((v) => v.state === "running").length;
  const failed = data.vms.filter((v) => v.state === "failed").length;
  const memory = data.vms.filter((v) => v.pid !== null).reduce((a, v) => a + v.memory, 0);
  return (
    <div class="view" data-test="host-view">
      <h1>Host {h?.hostname}</h1>
      <div class="figures">
        <Figure label="VMs" value={data.vms.length} sub={`${running} running${failed ? `, ${failed} failed` : ""}`} />
        <Figure label="Workers" value={sum(s, "tern_workers") ?? "–"} sub="worker processes" />
        <Figure label="Guest memory" value={bytes(memory)} sub="of VMs with a worker" />
        <Figure label="Worker memory" value={bytes(sum(s, "tern_vm_resident_memory_bytes"))} sub="resident" />
        <Figure label="CPU time" value={seconds(sum(s, "tern_vm_cpu_seconds_total"))} sub="all workers" />
        <Figure label="Disks" value={data.disks.length} sub={bytes(data.disks.reduce((a, d) => a + d.size, 0))} />
        <Figure label="Worker failures" value={sum(s, "tern_events_total", { kind: "failed" }) ?? 0} sub="since the registry began" />
      </div>
      <div class="columns">
        <Section title="Daemon">
          <dl class="props">
            <dt>Version</dt><dd>{h?.version}</dd>
            <dt>API</dt><dd>{h?.api_version} (<a href="/openapi.json" target="_blank">OpenAPI</a>)</dd>
            <dt>Process</dt><dd>{h?.pid}</dd>
            <dt>Disk directories</dt><dd>{h?.disk_dirs.map((d) => <div><code>{d}</code></div>)}</dd>
            <dt>Features</dt>
            <dd>
              {h && Object.entries(h.features).map(([k, v]) => (
                <span class={`chip ${v ? "on" : "off"}`}>{k.replace("_", " ")}</span>
              ))}
            </dd>
          </dl>
        </Section>
        <Section title="Recent events">
          <table class="list compact" data-test="events">
            <tbody>
              {data.events.map((e) => (
                <tr>
                  <td class="muted nowrap">{when(e.time)}</td>
                  <td><span class="chip">{e.kind}</span></td>
                  <td>{e.vm && <a href={`#/vms/${encodeURIComponent(e.vm)}`}>{e.vm}</a>} {e.message}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </Section>
      </div>
    </div>
  );
}
