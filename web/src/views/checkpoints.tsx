// Checkpoints as a tree (parent links from the VM's worker), with create,
// apply and delete.

import { useEffect, useState } from "preact/hooks";
import { api, type Checkpoint } from "../api";
import { when } from "../format";
import { ErrorLine, Section, useAction } from "./common";

interface Node { cp: Checkpoint; children: Node[] }

function tree(cps: Checkpoint[]): Node[] {
  const nodes = new Map(cps.map((c) => [c.id, { cp: c, children: [] as Node[] }]));
  const roots: Node[] = [];
  for (const n of nodes.values()) {
    const p = n.cp.parent ? nodes.get(n.cp.parent) : undefined;
    (p ? p.children : roots).push(n);
  }
  return roots;
}

export function Checkpoints({ vm, live, onChange }: { vm: string; live: boolean; onChange: () => void }) {
  const [cps, setCps] = useState<Checkpoint[]>([]);
  const [name, setName] = useState("");
  const [run, busy, error] = useAction();
  const load = () => api.checkpoints(vm).then(setCps, () => {});
  useEffect(() => {
    load();
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, [vm]);
  const act = (f: () => Promise<unknown>) =>
    run(async () => {
      await f();
      await load();
      onChange();
    });
  const create = (e: SubmitEvent) => {
    e.preventDefault();
    act(() => api.createCheckpoint(vm, name)).then(() => setName(""));
  };
  const render = (n: Node) => (
    <li>
      <div class={`cp ${n.cp.current ? "current" : ""}`} data-cp={n.cp.name}>
        <span class="cp-name">{n.cp.name}</span>
        {n.cp.current && <span class="chip on">now</span>}
        <span class="muted">{when(n.cp.created_at)}</span>
        <span class="spacer" />
        <button class="small" disabled={busy || !live} onClick={() => act(() => api.applyCheckpoint(vm, n.cp.name))}>Apply</button>
        <button class="small danger" disabled={busy || !live}
          onClick={() => confirm(`Delete checkpoint ${n.cp.name}?`) && act(() => api.deleteCheckpoint(vm, n.cp.name))}>Delete</button>
      </div>
      {n.children.length > 0 && <ul>{n.children.map(render)}</ul>}
    </li>
  );
  return (
    <Section title="Checkpoints">
      {cps.length ? <ul class="tree" data-test="checkpoints">{tree(cps).map(render)}</ul> : <p class="muted">No checkpoints.</p>}
      <form class="row" onSubmit={create} data-test="create-checkpoint">
        <input name="checkpoint" placeholder="checkpoint name" value={name} required onInput={(e) => setName(e.currentTarget.value)} />
        <button type="submit" disabled={busy || !live}>Take checkpoint</button>
        {!live && <span class="muted">The VM's worker keeps its checkpoints: start it first.</span>}
      </form>
      <ErrorLine error={error} />
    </Section>
  );
}
