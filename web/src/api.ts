// The REST API of ternd (crates/tern-api/src/types.rs; /openapi.json), as
// the page uses it. The page is served by the daemon it talks to: paths are
// relative to its origin.

export type VmState =
  | "stopped" | "starting" | "running" | "paused" | "stopping"
  | "saving" | "saved" | "restoring" | "migrating" | "failed";

export interface Vm {
  id: string; name: string; vcpus: number; memory: number; guest: string;
  state: VmState; reason: string | null; pid: number | null; disks: string[];
  created_at: string; updated_at: string;
}
export interface Features { save_restore: boolean; migration: boolean; disks: boolean; checkpoints: boolean }
export interface HostInfo {
  hostname: string; version: string; api_version: string; pid: number;
  vms: number; running: number; disk_dirs: string[]; features: Features;
}
export interface DiskQos { max_iops: number | null; min_iops: number | null; max_bw: number | null }
export interface Disk {
  id: string; name: string; path: string; format: "vhdx" | "raw"; size: number;
  vm: string | null; qos: DiskQos;
}
export interface Checkpoint {
  id: string; vm: string; name: string; created_at: string;
  parent: string | null; current: boolean;
}
export type MigrationState = "pending" | "running" | "completed" | "failed" | "cancelled";
export interface Migration {
  id: string; vm: string; direction: "outgoing" | "incoming"; peer: string;
  state: MigrationState; transferred_bytes: number; total_bytes: number; rounds: number;
  memory_sent_bytes: number; remaining_bytes: number; expected_downtime_ms: number | null;
  downtime_ms: number | null; total_ms: number | null; error: string | null;
}
export interface Event { seq: number; time: string; vm_id: string | null; vm: string | null; kind: string; message: string }
export interface CreateVm { name: string; vcpus?: number; memory?: string; guest: string; disks?: string[] }

/** An error reply of the API (or of the network). */
export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string) {
    super(message);
  }
}

const TOKEN_KEY = "tern.token";

/** The API token, kept for this browser tab only. */
export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}
export function setToken(t: string | null) {
  if (t === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, t);
}

/** Listeners told when the API refuses the token (401). */
const unauthorized = new Set<(msg: string) => void>();
export function onUnauthorized(f: (msg: string) => void): () => void {
  unauthorized.add(f);
  return () => unauthorized.delete(f);
}

async function call<T>(method: string, path: string, body?: unknown, t = token()): Promise<T> {
  const headers: Record<string, string> = {};
  if (t) headers["Authorization"] = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r: Response;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "network", `cannot reach the daemon: ${(e as Error).message}`);
  }
  if (r.status === 204) return undefined as T;
  const text = await r.text();
  if (r.ok && !(r.headers.get("Content-Type") ?? "").startsWith("application/json")) return text as T;
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: /metrics, or a proxy's page
  }
  if (!r.ok) {
    const e = json as { code?: string; message?: string } | null;
    const err = new ApiError(r.status, e?.code ?? "http", e?.message ?? `${r.status} ${r.statusText}`);
    if (r.status === 401) unauthorized.forEach((f) => f(err.message));
    throw err;
  }
  return json as T;
}

const enc = encodeURIComponent;

export const api = {
  /** Checks a token without keeping it. */
  tryToken: (t: string | null) => call<HostInfo>("GET", "/v1/host", undefined, t),
  host: () => call<HostInfo>("GET", "/v1/host"),
  vms: () => call<{ vms: Vm[] }>("GET", "/v1/vms").then((r) => r.vms),
  vm: (vm: string) => call<Vm>("GET", `/v1/vms/${enc(vm)}`),
  createVm: (spec: CreateVm) => call<Vm>("POST", "/v1/vms", spec),
  deleteVm: (vm: string) => call<void>("DELETE", `/v1/vms/${enc(vm)}`),
  action: (vm: string, what: "start" | "stop" | "force-stop" | "pause" | "resume" | "save" | "restore") =>
    call<Vm>("POST", `/v1/vms/${enc(vm)}/${what}`),
  disks: () => call<{ disks: Disk[] }>("GET", "/v1/disks").then((r) => r.disks),
  createDisk: (name: string, size: string, format: "vhdx" | "raw") =>
    call<Disk>("POST", "/v1/disks", { name, size, format }),
  deleteDisk: (disk: string) => call<void>("DELETE", `/v1/disks/${enc(disk)}`),
  attach: (vm: string, disk: string) => call<Vm>("POST", `/v1/vms/${enc(vm)}/disks`, { disk }),
  detach: (vm: string, disk: string) => call<Vm>("DELETE", `/v1/vms/${enc(vm)}/disks/${enc(disk)}`),
  checkpoints: (vm: string) =>
    call<{ checkpoints: Checkpoint[] }>("GET", `/v1/vms/${enc(vm)}/checkpoints`).then((r) => r.checkpoints),
  createCheckpoint: (vm: string, name: string) => call<Checkpoint>("POST", `/v1/vms/${enc(vm)}/checkpoints`, { name }),
  applyCheckpoint: (vm: string, cp: string) => call<Vm>("POST", `/v1/vms/${enc(vm)}/checkpoints/${enc(cp)}/apply`),
  deleteCheckpoint: (vm: string, cp: string) => call<void>("DELETE", `/v1/vms/${enc(vm)}/checkpoints/${enc(cp)}`),
  migrate: (vm: string, to: string, token: string | null) =>
    call<Migration>("POST", `/v1/vms/${enc(vm)}/migrate`, { to, token: token || null }),
  migration: (id: string) => call<Migration>("GET", `/v1/migrations/${enc(id)}`),
  migrations: () => call<{ migrations: Migration[] }>("GET", "/v1/migrations").then((r) => r.migrations),
  cancelMigration: (id: string) => call<Migration>("POST", `/v1/migrations/${enc(id)}/cancel`),
  events: (since: number, wait: number, limit = 100) =>
    call<{ events: Event[] }>("GET", `/v1/events?since=${since}&wait=${wait}&limit=${limit}`).then((r) => r.events),
  metrics: () => call<string>("GET", "/metrics"),
};

/** The console WebSocket of `vm`; the token travels as a subprotocol (a browser cannot set headers on a WebSocket). */
export function consoleSocket(vm: string): WebSocket {
  const url = new URL(`/v1/vms/${enc(vm)}/console`, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const protocols = ["tern.console"];
  const t = token();
  if (t) protocols.push("tern.bearer." + base64url(t));
  const ws = new WebSocket(url, protocols);
  ws.binaryType = "arraybuffer";
  return ws;
}

function base64url(s: string): string {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  bytes.forEach((b) => (bin += String.fromCharCode(b)));
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
