/** Whether `zone` is a time zone name the runtime (and so Scheduler's IANA database) knows. */
export function isTimeZone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

/** A zone whose clock never shifts: its daily ticks are exactly a day apart. */
export function isUtc(zone: string): boolean {
  return ['UTC', 'Etc/UTC', 'GMT', 'Etc/GMT'].includes(zone);
}
