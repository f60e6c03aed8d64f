import { useState } from "preact/hooks";
import { api } from "../api";
import type { Data } from "../app";
import { bytes, seconds } from "../format";
import { sum } from "../metrics";
import { ErrorLine, Section, StateBadge, useAction } from "./common";

function CreateVm({ data, onDone }: { data: Data; onDone: () => void }) {
  const [name, setName] = useState("");
  const [vcpus, setVcpus] = useState(1);
  const [memory, setMemory] = useState("64M");
  const [guest, setGuest] = useState("probe:hello+echo");
  const [disks, setDisks] = useState<string[]>([]);
  const [start, setStart] = useState(false);
  const [run, busy, error] = useAction();
  const free = data.disks.filter((d) => !d.vm);
  const submit = (e: SubmitEvent) => {
    e.preventDefault();
    run(async () => {
      await api.createVm({ name, vcpus, memory, guest, disks });
      if (start) await api.action(name, "start");
      data.refresh();
      location.hash = `#/vms/${encodeURIComponent(name)}`;
      onDone();
    });
  };
  return (
    <form class="form-grid" onSubmit={submit} data-test="create-vm">
      <label>Name<input name="name" value={name} required onInput={(e) => setName(e.currentTarget.value)} /></label>
      <label>vCPUs<input name="vcpus" type="number" min={1} max={64} value={vcpus} onInput={(e) => setVcpus(Number(e.currentTarget.value))} /></label>
      <label>Memory<input name="memory" value={memory} onInput={(e) => setMemory(e.currentTarget.value)} /></label>
      <label class="wide">Guest<input name="guest" value={guest} onInput={(e) => setGuest(e.currentTarget.value)} /></label>
      {free.length > 0 && (
        <label class="wide">Disks
          <select multiple name="disks" onChange={(e) => setDisks([...e.currentTarget.selectedOptions].map((o) => o.value))}>
            {free.map((d) => <option value={d.name}>{d.name} ({bytes(d.size)})</option>)}
          </select>
        </label>
      )}
      <label class="check"><input type="checkbox" name="start" checked={start} onChange={(e) => setStart(e.currentTarget.checked)} /> Start it</label>
      <div class="wide row">
        <button class="primary" type="submit" disabled={busy}>Create</button>
        <button type="button" class="ghost" onClick={onDone}>Cancel</button>
      </div>
      <ErrorLine error={error} />
    </form>
  );
}

export function VmsView({ data }: { data: Data }) {
  const [creating, setCreating] = useState(false);
  const s = data.samples;
  return (
    <div class="view" data-test="vms-view">
      <h1>Virtual machines</h1>
      <Section title={`${data.vms.length} VMs`} actions={!creating && <button class="primary" onClick={() => setCreating(true)}>New VM</button>}>
        {creating && <CreateVm data={data} onDone={() => setCreating(false)} />}
        <table class="list" data-test="vm-table">
          <thead>
            <tr><th>Name</th><th>State</th><th>vCPUs</th><th>Memory</th><th>CPU time</th><th>Resident</th><th>Guest</th><th>Disks</th></tr>
          </thead>
          <tbody>
            {data.vms.map((v) => (
              <tr data-vm={v.name}>
                <td><a href={`#/vms/${encodeURIComponent(v.name)}`}>{v.name}</a></td>
                <td><StateBadge state={v.state} /></td>
                <td class="num">{v.vcpus}</td>
                <td class="num">{bytes(v.memory)}</td>
                <td class="num">{seconds(sum(s, "tern_vm_cpu_seconds_total", { vm: v.id }))}</td>
                <td class="num">{bytes(sum(s, "tern_vm_resident_memory_bytes", { vm: v.id }))}</td>
                <td><code>{v.guest}</code></td>
                <td>{v.disks.join(", ") || <span class="muted">none</span>}</td>
              </tr>
            ))}
            {data.vms.length === 0 && <tr><td colSpan={8} class="muted">No VMs yet.</td></tr>}
          </tbody>
        </table>
      </Section>
    </div>
  );
}
