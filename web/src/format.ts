// Figures for people.

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

export function ms(n: number | null | undefined): string {
  if (n === null || n === undefined) return "–";
  return n < 1000 ? `${n.toFixed(n < 10 ? 1 : 0)} ms` : `${(n / 1000).toFixed(2)} s`;
}

export function seconds(n: number | null | undefined): string {
  if (n === null || n === undefined) return "–";
  return `${n.toFixed(n < 10 ? 2 : 1)} s`;
}

export function when(rfc3339: string): string {
  const d = new Date(rfc3339);
  return isNaN(d.getTime()) ? rfc3339 : d.toLocaleString();
}
