import { useState } from "preact/hooks";
import { api } from "../api";
import type { Data } from "../app";
import { bytes } from "../format";
import { ErrorLine, Section, useAction } from "./common";

export function DisksView({ data }: { data: Data }) {
  const [name, setName] = useState("");
  const [size, setSize] = useState("1G");
  const [format, setFormat] = useState<"vhdx" | "raw">("vhdx");
  const [run, busy, error] = useAction();
  const act = (f: () => Promise<unknown>) => run(async () => { await f(); data.refresh(); });
  const create = (e: SubmitEvent) => {
    e.preventDefault();
    act(() => api.createDisk(name, size, format)).then(() => setName(""));
  };
  const qos = (q: { max_iops: number | null; min_iops: number | null; max_bw: number | null }) =>
    [q.max_iops && `≤ ${q.max_iops} IOPS`, q.min_iops && `≥ ${q.min_iops} IOPS`, q.max_bw && `≤ ${bytes(q.max_bw)}/s`]
      .filter(Boolean).join(", ") || "unlimited";
  return (
    <div class="view" data-test="disks-view">
      <h1>Disks</h1>
      <Section title={`${data.disks.length} disks`}>
        <table class="list" data-test="disk-table">
          <thead><tr><th>Name</th><th>Format</th><th>Size</th><th>VM</th><th>QoS</th><th>Path</th><th /></tr></thead>
          <tbody>
            {data.disks.map((d) => (
              <tr>
                <td>{d.name}</td>
                <td>{d.format}</td>
                <td class="num">{bytes(d.size)}</td>
                <td>{d.vm ? <a href={`#/vms/${encodeURIComponent(d.vm)}`}>{d.vm}</a> : <span class="muted">free</span>}</td>
                <td>{qos(d.qos)}</td>
                <td><code>{d.path}</code></td>
                <td><button class="small danger" disabled={busy || !!d.vm}
                  onClick={() => confirm(`Delete disk ${d.name} and its file?`) && act(() => api.deleteDisk(d.name))}>Delete</button></td>
              </tr>
            ))}
            {data.disks.length === 0 && <tr><td colSpan={7} class="muted">No disks.</td></tr>}
          </tbody>
        </table>
        <form class="row" onSubmit={create} data-test="create-disk">
          <input name="disk" placeholder="name" value={name} required onInput={(e) => setName(e.currentTarget.value)} />
          <input name="size" placeholder="size" value={size} size={6} onInput={(e) => setSize(e.currentTarget.value)} />
          <select value={format} onChange={(e) => setFormat(e.currentTarget.value as "vhdx" | "raw")}>
            <option value="vhdx">VHDX</option><option value="raw">raw</option>
          </select>
          <button type="submit" disabled={busy}>Create disk</button>
        </form>
        <ErrorLine error={error} />
      </Section>
    </div>
  );
}
