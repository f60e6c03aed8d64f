// One VM: its figures and actions, console, disks, checkpoints, migration.

import { useEffect, useRef, useState } from "preact/hooks";
import { api, type Vm } from "../api";
import type { Data } from "../app";
import { bytes, seconds, when } from "../format";
import { sum } from "../metrics";
import { Checkpoints } from "./checkpoints";
import { Console } from "./console";
import { ErrorLine, Figure, Section, StateBadge, useAction } from "./common";
import { Migrate } from "./migrate";

type Action = "start" | "stop" | "force-stop" | "pause" | "resume" | "save" | "restore";

/** The actions a VM in each state takes. */
function actions(v: Vm): Action[] {
  switch (v.state) {
    case "stopped": case "failed": return ["start"];
    case "running": return ["pause", "stop", "force-stop", "save"];
    case "paused": return ["resume", "stop", "force-stop", "save"];
    case "saved": return ["restore"];
    case "starting": case "stopping": case "saving": case "restoring": case "migrating": return ["force-stop"];
  }
}

const label: Record<Action, string> = {
  start: "Start", stop: "Stop", "force-stop": "Turn off", pause: "Pause", resume: "Resume", save: "Save", restore: "Restore",
};

function Disks({ vm, data }: { vm: Vm; data: Data }) {
  const [pick, setPick] = useState("");
  const [run, busy, error] = useAction();
  const free = data.disks.filter((d) => !d.vm);
  const act = (f: () => Promise<unknown>) => run(async () => { await f(); data.refresh(); });
  return (
    <Section title="Disks">
      <table class="list compact" data-test="vm-disks">
        <tbody>
          {vm.disks.map((name, i) => {
            const d = data.disks.find((x) => x.name === name);
            const m = { vm: vm.id, index: String(i) };
            return (
              <tr>
                <td>{name}</td>
                <td class="num">{bytes(d?.size)}</td>
                <td class="muted">{d?.format}</td>
                <td class="num">{sum(data.samples, "tern_disk_requests_total", m) ?? "–"} requests</td>
                <td class="num">{bytes(sum(data.samples, "tern_disk_read_bytes_total", m))} read</td>
                <td class="num">{bytes(sum(data.samples, "tern_disk_written_bytes_total", m))} written</td>
                <td><button class="small" disabled={busy} onClick={() => act(() => api.detach(vm.name, name))}>Detach</button></td>
              </tr>
            );
          })}
          {vm.disks.length === 0 && <tr><td class="muted">No disks attached.</td></tr>}
        </tbody>
      </table>
      {free.length > 0 && (
        <div class="row">
          <select value={pick} onChange={(e) => setPick(e.currentTarget.value)}>
            <option value="">attach a disk…</option>
            {free.map((d) => <option value={d.name}>{d.name} ({bytes(d.size)})</option>)}
          </select>
          <button disabled={!pick || busy} onClick={() => act(() => api.attach(vm.name, pick))}>Attach</button>
        </div>
      )}
      <ErrorLine error={error} />
    </Section>
  );
}

export function VmView({ name, data }: { name: string; data: Data }) {
  const found = data.vms.find((v) => v.name === name);
  const last = useRef<Vm | null>(null);
  const [direct, setDirect] = useState<Vm | null>(null);
  const [run, busy, error] = useAction();
  // The list may not have it yet (just created): ask for it directly.
  useEffect(() => {
    if (!found) api.vm(name).then(setDirect, () => setDirect(null));
  }, [name, !!found]);
  const vm = found ?? direct ?? last.current;
  if (found) last.current = found;
  if (!vm) return <div class="view"><h1>{name}</h1><p class="muted">No VM named {name} on this host.</p></div>;
  const gone = !found && !direct;
  const live = !gone && (vm.state === "running" || vm.state === "paused");
  const s = data.samples;
  const act = (a: Action) => run(async () => { await api.action(vm.name, a); data.refresh(); });
  const del = () =>
    confirm(`Delete VM ${vm.name}? Its disks stay.`) &&
    run(async () => { await api.deleteVm(vm.name); data.refresh(); location.hash = "#/vms"; });
  return (
    <div class="view" data-test="vm-view" data-vm={vm.name}>
      <div class="title-row">
        <h1>{vm.name}</h1>
        {gone ? <span class="badge st-stopped">not on this host</span> : <StateBadge state={vm.state} />}
        <span class="spacer" />
        {!gone && actions(vm).map((a) => (
          <button class={a === "start" || a === "resume" || a === "restore" ? "primary" : a === "force-stop" ? "danger" : ""}
            disabled={busy} onClick={() => act(a)} data-action={a}>{label[a]}</button>
        ))}
        {!gone && <button class="danger ghost" disabled={busy || vm.pid !== null} onClick={del} data-action="delete">Delete</button>}
      </div>
      <ErrorLine error={error} />
      {vm.reason && <p class="muted">Last: {vm.reason}</p>}
      {gone && <p class="muted" data-test="gone">This VM is no longer on this host (migrated or deleted); what follows is how it was.</p>}
      <div class="figures">
        <Figure label="vCPUs" value={vm.vcpus} />
        <Figure label="Memory" value={bytes(vm.memory)} sub={`resident ${bytes(sum(s, "tern_vm_resident_memory_bytes", { vm: vm.id }))}`} />
        <Figure label="CPU time" value={seconds(sum(s, "tern_vm_cpu_seconds_total", { vm: vm.id }))} />
        <Figure label="Worker" value={(!gone && vm.pid) || "–"} sub="process id" />
        <Figure label="Guest" value={<code>{vm.guest}</code>} sub={`created ${when(vm.created_at)}`} />
      </div>
      <Section title="Console">
        <Console vm={vm.name} live={live} />
      </Section>
      <div class="columns">
        <Checkpoints vm={vm.name} live={live} onChange={data.refresh} />
        <Migrate vm={vm.name} live={live} onChange={data.refresh} />
      </div>
      <Disks vm={vm} data={data} />
    </div>
  );
}
