import type { ComponentChildren } from "preact";
import { useState } from "preact/hooks";
import type { VmState } from "../api";

export function StateBadge({ state, dot }: { state: VmState; dot?: boolean }) {
  return dot ? <span class={`dot st-${state}`} title={state} /> : <span class={`badge st-${state}`} data-test="state">{state}</span>;
}

export function Figure({ label, value, sub }: { label: string; value: ComponentChildren; sub?: ComponentChildren }) {
  return (
    <div class="figure">
      <div class="label">{label}</div>
      <div class="value">{value}</div>
      {sub !== undefined && <div class="sub muted">{sub}</div>}
    </div>
  );
}

/** Runs an API call behind a button: busy while it runs, its error shown. */
export function useAction(): [(f: () => Promise<unknown>) => Promise<void>, boolean, string | null, () => void] {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const run = async (f: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await f();
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return [run, busy, error, () => setError(null)];
}

export function ErrorLine({ error }: { error: string | null }) {
  return error ? <div class="error" role="alert">{error}</div> : null;
}

export function Section({ title, children, actions }: { title: string; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <section class="card">
      <div class="card-head"><h2>{title}</h2>{actions}</div>
      {children}
    </section>
  );
}
