-- Live workers, recorded by their heartbeat, so that an operator can see which workers run
-- (`portraitkit workers`) and a user watching a pending batch can be told that none does.
--
-- A worker checks in when it starts, on every heartbeat and once more when it stops. Each
-- check-in says how long the record holds without another (`ttl_seconds`, a few heartbeat
-- intervals): a worker that was killed, or lost its database, simply stops being live when
-- that runs out. Nothing depends on this table for correctness (leases do that); it only
-- answers "is anybody working?".

create table private.workers (
  worker_id text primary key,
  hostname text,
  pid integer,
  version text,
  concurrency integer,
  generator text,
  stats jsonb not null default '{}'::jsonb,
  started_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  expires_at timestamptz not null,
  stopped_at timestamptz
);

comment on table private.workers is
  'Worker processes as their heartbeats last reported them; live while expires_at is ahead and stopped_at is null.';

-- Only the functions below (its owner's) read or write it; RLS with no policy keeps
-- everyone else out.
alter table private.workers enable row level security;
create index workers_live_idx on private.workers (expires_at) where stopped_at is null;

-- Record a worker's presence. `info` carries what it is (hostname, pid, version,
-- concurrency, generator) and its counters so far (stats). Records of workers gone for a
-- day are dropped on the way, so the table stays the size of the fleet.
create function public.worker_checkin(
  worker_id text,
  info jsonb default '{}'::jsonb,
  ttl_seconds integer default 90,
  stopping boolean default false
) returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.check_text(worker_id, 'worker_id', 200);
  if info is null or pg_catalog.jsonb_typeof(info) <> 'object' then
    perform private.raise_error('invalid_input', 400, 'info must be a JSON object.',
      pg_catalog.jsonb_build_object('field', 'info'));
  end if;
  if ttl_seconds is null or ttl_seconds not between 1 and 86400 then
    perform private.raise_error('invalid_input', 400,
      'ttl_seconds must be between 1 and 86400.',
      pg_catalog.jsonb_build_object('field', 'ttl_seconds'));
  end if;
  insert into private.workers as w
    (worker_id, hostname, pid, version, concurrency, generator, stats, expires_at, stopped_at)
  values (
    worker_checkin.worker_id,
    left(info->>'hostname', 255),
    case when pg_catalog.jsonb_typeof(info->'pid') = 'number' then (info->>'pid')::numeric::integer end,
    left(info->>'version', 64),
    case when pg_catalog.jsonb_typeof(info->'concurrency') = 'number'
         then (info->>'concurrency')::numeric::integer end,
    left(info->>'generator', 64),
    coalesce(case when pg_catalog.jsonb_typeof(info->'stats') = 'object' then info->'stats' end,
             '{}'::jsonb),
    now() + pg_catalog.make_interval(secs => ttl_seconds),
    case when stopping then now() end)
  on conflict on constraint workers_pkey do update
     set stats = excluded.stats,
         last_seen_at = now(),
         expires_at = excluded.expires_at,
         stopped_at = excluded.stopped_at;
  delete from private.workers w
   where w.expires_at < now() - interval '1 day'
     and w.worker_id <> worker_checkin.worker_id;
end
$$;

-- Every worker recorded (live first), with the items it holds right now.
create function public.list_workers(include_stopped boolean default false)
returns table (
  worker_id text,
  status text,
  hostname text,
  pid integer,
  version text,
  concurrency integer,
  generator text,
  running integer,
  stats jsonb,
  started_at timestamptz,
  last_seen_at timestamptz,
  stopped_at timestamptz
)
language sql
stable
security definer
set search_path = ''
as $$
  select w.worker_id,
         case when w.stopped_at is not null then 'stopped'
              when w.expires_at > now() then 'live'
              else 'lost' end,
         w.hostname, w.pid, w.version, w.concurrency, w.generator,
         (select count(*)::integer from public.generations g
           where g.status = 'processing' and g.lease_owner = w.worker_id),
         w.stats, w.started_at, w.last_seen_at, w.stopped_at
    from private.workers w
   where include_stopped or (w.stopped_at is null and w.expires_at > now())
   order by (w.stopped_at is null and w.expires_at > now()) desc, w.started_at, w.worker_id
$$;

-- How many workers are live: all a user may know of them (a pending batch with none
-- will not move). The count alone, through a definer function: users cannot read the table.
create function private.workers_online() returns integer
language sql
stable
security definer
set search_path = ''
as $$
  select count(*)::integer from private.workers w
   where w.stopped_at is null and w.expires_at > now()
$$;

create function public.workers_online() returns integer
language sql
stable
security invoker
set search_path = ''
as $$
  select private.workers_online()
$$;

revoke all on function
  public.worker_checkin(text, jsonb, integer, boolean),
  public.list_workers(boolean),
  public.workers_online(),
  private.workers_online()
  from public, anon, authenticated;
grant execute on function
  public.worker_checkin(text, jsonb, integer, boolean),
  public.list_workers(boolean)
  to service_role;
grant execute on function public.workers_online(), private.workers_online()
  to authenticated, service_role;
