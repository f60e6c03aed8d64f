// The shell: token entry, navigation (hash routes), the data every view
// shares (refreshed every 2 s and at once on each registry event).

import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, onUnauthorized, setToken, token, type Disk, type Event, type HostInfo, type Vm } from "./api";
import { parseMetrics, type Sample } from "./metrics";
import { HostView } from "./views/host";
import { VmsView } from "./views/vms";
import { VmView } from "./views/vm";
import { DisksView } from "./views/disks";
import { MigrationsView } from "./views/migrations";
import { StateBadge } from "./views/common";

export interface Data {
  host: HostInfo | null;
  vms: Vm[];
  disks: Disk[];
  samples: Sample[];
  events: Event[];
  refresh: () => void;
}

function useRoute(): string[] {
  const get = () => location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const [route, setRoute] = useState(get);
  useEffect(() => {
    const f = () => setRoute(get());
    addEventListener("hashchange", f);
    return () => removeEventListener("hashchange", f);
  }, []);
  return route;
}

function TokenForm({ refused, onDone }: { refused: string | null; onDone: () => void }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(refused);
  const [busy, setBusy] = useState(false);
  const submit = async (e: SubmitEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.tryToken(value.trim());
      setToken(value.trim());
      onDone();
    } catch (err) {
      const a = err as ApiError;
      setError(a.status === 401 ? `The daemon refused this token (${a.message}).` : a.message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="login">
      <form class="card" onSubmit={submit} data-test="token-form">
        <h1><span class="logo">◆</span> Tern</h1>
        <p class="muted">
          This daemon's API needs its bearer token: the contents of the file given to
          <code>ternd --token-file</code>.
        </p>
        <label>
          API token
          <input type="password" name="token" autoFocus value={value} onInput={(e) => setValue(e.currentTarget.value)}
            autoComplete="current-password" required />
        </label>
        {error && <div class="error" role="alert" data-test="token-error">{error}</div>}
        <button class="primary" type="submit" disabled={busy}>Sign in</button>
      </form>
    </div>
  );
}

export function App() {
  // null: not known yet; false: a token is needed; true: the API answers.
  const [authed, setAuthed] = useState<boolean | null>(null);
  const [refused, setRefused] = useState<string | null>(null);
  const [data, setData] = useState<Omit<Data, "refresh">>({ host: null, vms: [], disks: [], samples: [], events: [] });
  const [problem, setProblem] = useState<string | null>(null);
  const route = useRoute();
  const seq = useRef(0);

  // Without a stored token, try without one (the UNIX socket needs none;
  // TCP answers 401 and the form shows).
  useEffect(() => {
    api.tryToken(token()).then(
      () => setAuthed(true),
      (e: ApiError) => {
        if (e.status === 401) {
          if (token()) setRefused(`The daemon refused the stored token (${e.message}).`);
          setToken(null);
          setAuthed(false);
        } else {
          setProblem(e.message);
          setAuthed(true);
        }
      },
    );
    return onUnauthorized((msg) => {
      setToken(null);
      setRefused(`The daemon refused the token (${msg}).`);
      setAuthed(false);
    });
  }, []);

  const refresh = useCallback(async () => {
    try {
      const [host, vms, disks, text, events] = await Promise.all([
        api.host(), api.vms(), api.disks(), api.metrics(), api.events(0, 0, 1000),
      ]);
      setData({ host, vms, disks, samples: parseMetrics(text), events: events.slice(-30).reverse() });
      seq.current = events.length ? events[events.length - 1].seq : seq.current;
      setProblem(null);
    } catch (e) {
      if ((e as ApiError).status !== 401) setProblem((e as Error).message);
    }
  }, []);

  useEffect(() => {
    if (!authed) return;
    let live = true;
    refresh();
    const timer = setInterval(refresh, 2000);
    // Long-poll the events: a change shows at once, not at the next tick.
    (async () => {
      while (live) {
        try {
          const ev = await api.events(seq.current, 20);
          if (!live) break;
          if (ev.length) {
            seq.current = ev[ev.length - 1].seq;
            refresh();
          }
        } catch {
          await new Promise((r) => setTimeout(r, 2000));
        }
      }
    })();
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [authed]);

  if (authed === null) return <div class="login muted">Connecting…</div>;
  if (!authed) return <TokenForm refused={refused} onDone={() => { setRefused(null); setAuthed(true); }} />;

  const d: Data = { ...data, refresh };
  const [section, name] = route;
  let view;
  if (section === "vms" && name) view = <VmView key={name} name={name} data={d} />;
  else if (section === "vms") view = <VmsView data={d} />;
  else if (section === "disks") view = <DisksView data={d} />;
  else if (section === "migrations") view = <MigrationsView />;
  else view = <HostView data={d} />;
  const active = (s: string) => ((section ?? "") === s ? "active" : "");

  return (
    <div class="shell">
      <header class="top">
        <a class="brand" href="#/"><span class="logo">◆</span> Tern</a>
        <span class="host-name" data-test="host-name">{d.host?.hostname ?? "…"}</span>
        <span class="muted">ternd {d.host?.version}</span>
        <span class="spacer" />
        {problem && <span class="error inline" role="alert">{problem}</span>}
        {token() && (
          <button class="ghost" onClick={() => { setToken(null); setAuthed(false); }}>Sign out</button>
        )}
      </header>
      <nav class="side">
        <a class={active("")} href="#/">Host</a>
        <a class={active("vms")} href="#/vms">Virtual machines</a>
        <div class="vm-links">
          {d.vms.map((v) => (
            <a class={name === v.name ? "active" : ""} href={`#/vms/${encodeURIComponent(v.name)}`}>
              <StateBadge state={v.state} dot /> {v.name}
            </a>
          ))}
        </div>
        <a class={active("disks")} href="#/disks">Disks</a>
        <a class={active("migrations")} href="#/migrations">Migrations</a>
      </nav>
      <main>{view}</main>
    </div>
  );
}
