-- The queue's hot state in a narrow table of its own, so that a status change on
-- `generations` is a HOT update (no index touched) and a claim reads only small indexes
-- (issue 9, "lean on the database"); and the worker's calls made cheaper where they were
-- measured to cost most (benchmarks/worker_throughput.py, README "Performance").
--
-- Before, every claim and completion rewrote a wide `generations` row and inserted into
-- its indexes: the queue's partial indexes keyed on `status` and `lease_expires_at`, so no
-- status change and no heartbeat could be HOT. Now `generations` has no index on anything
-- the worker changes, and `private.generation_queue` holds one small row per pending or
-- processing item (its fair tag, run_after, lease), kept by the triggers on `generations`
-- in the statement that changes the item: `generations` stays the one truth, whoever
-- writes it (the contract's functions, an operator's UPDATE, a cascade), and the queue
-- follows. Nobody reads or writes the queue table but those triggers and the worker's
-- definer functions.
--
-- Lock order (docs/contract.md) is unchanged, with one step added: items (in id order),
-- then their queue rows (by the trigger of the statement that changed the items, so only
-- ever by the holder of the item's lock), then batches, then profiles. Claims and lease
-- recovery read the queue without locking it and lock the items with SKIP LOCKED.
--
-- Also: the heartbeat and the completion find their items by primary key; the completion
-- checks its paths in one call (private.outside_folders, which private.in_folder now
-- uses too) and looks for a resent flush only among the ids it did not just accept, after
-- the update (the probe before the update was planned as if nothing was completed and
-- cost most of a completion); the batch status is derived inline in the counters update;
-- a statement's batch notifications are sent in one query.

create table private.generation_queue (
  id uuid primary key,  -- the item's id (rows go with their item, by trigger)
  status public.generation_status not null check (status in ('pending', 'processing')),
  user_id uuid not null,
  batch_id uuid not null,
  position smallint not null,
  fair_tag bigint not null,
  queued_at timestamptz not null,
  run_after timestamptz not null,
  lease_expires_at timestamptz
) with (fillfactor = 80);

comment on table private.generation_queue is
  'The queue''s hot state: one row per pending or processing generation, kept by triggers.';

-- Claims walk this in fair order (the fair-queue migration's generations_fair_queue_idx).
create index generation_queue_fair_idx
  on private.generation_queue (fair_tag, queued_at, batch_id, position) where status = 'pending';
-- A user's highest pending tag, for the next one (private.next_fair_tag).
create index generation_queue_user_fair_idx
  on private.generation_queue (user_id, fair_tag) where status = 'pending';
-- Expired leases, for recovery.
create index generation_queue_lease_idx
  on private.generation_queue (lease_expires_at) where status = 'processing';

-- Only the triggers and the worker functions (its owner's) touch it; RLS with no policy
-- keeps everyone else out.
alter table private.generation_queue enable row level security;
revoke all on private.generation_queue from public, anon, authenticated, service_role;

insert into private.generation_queue
  (id, status, user_id, batch_id, position, fair_tag, queued_at, run_after, lease_expires_at)
select g.id, g.status, g.user_id, g.batch_id, g.position, g.fair_tag, g.queued_at, g.run_after,
       g.lease_expires_at
  from public.generations g
 where g.status in ('pending', 'processing');

-- Nothing on generations keys on status or leases any more: status changes can be HOT.
drop index public.generations_fair_queue_idx;
drop index public.generations_user_fair_idx;
drop index public.generations_processing_lease_idx;
-- Room on each page for an item's next versions (a claim, then a completion), and for a
-- batch's counters, whose changes touch no index unless its status changes: new pages
-- keep a fifth free.
alter table public.generations set (fillfactor = 80);
alter table public.generation_batches set (fillfactor = 80);

-- The tag for a user's next pending item, read from the queue. The row triggers below put
-- each new pending item in the queue at once, so a batch's items get consecutive tags.
create or replace function private.next_fair_tag(owner uuid) returns bigint
language sql volatile
set search_path = ''
as $$
  select greatest(
    coalesce((select q.fair_tag from private.generation_queue q
               where q.status = 'pending' and q.run_after <= now()
               order by q.fair_tag limit 1), 0),
    coalesce((select max(q.fair_tag) + 1 from private.generation_queue q
               where q.user_id = owner and q.status = 'pending'), 0))
$$;

-- A new pending item (a new batch's, a retried one) gets its tag and its queue row here,
-- row by row, so the next item of the same statement sees it.
create or replace function private.assign_fair_tag() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.fair_tag := private.next_fair_tag(new.user_id);
  insert into private.generation_queue
    (id, status, user_id, batch_id, position, fair_tag, queued_at, run_after, lease_expires_at)
  values (new.id, new.status, new.user_id, new.batch_id, new.position, new.fair_tag,
          new.queued_at, new.run_after, new.lease_expires_at);
  return new;
end
$$;

-- The queue follows each statement's changes of generations, in the statement triggers
-- that keep the batch counters: queued rows that left pending and processing go, queued
-- rows that stayed get their queue fields copied, and only rows whose queue fields changed
-- are touched (a claim updates its rows, a completion deletes them). The one way into the
-- queue by UPDATE, failed -> pending (a retry; the transition check refuses any other),
-- is the tag trigger's, which puts the row in with its tag. The queue comes before the
-- counters: items, then their queue rows, then batches.
create or replace function private.on_generations_updated() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  changes private.generation_change[];
begin
  with moved as materialized (
    select n.id, n.status, n.user_id, n.batch_id, n.position, n.fair_tag, n.queued_at,
           n.run_after, n.lease_expires_at
      from new_rows n join old_rows o on o.id = n.id
     where o.status in ('pending', 'processing')
       and (o.status, o.user_id, o.batch_id, o.position, o.fair_tag, o.queued_at,
            o.run_after, o.lease_expires_at)
           is distinct from
           (n.status, n.user_id, n.batch_id, n.position, n.fair_tag, n.queued_at,
            n.run_after, n.lease_expires_at)
  ), gone as (
    delete from private.generation_queue q
     using moved m
     where q.id = m.id and m.status not in ('pending', 'processing')
  )
  update private.generation_queue q
     set status = m.status, user_id = m.user_id, batch_id = m.batch_id,
         position = m.position, fair_tag = m.fair_tag, queued_at = m.queued_at,
         run_after = m.run_after, lease_expires_at = m.lease_expires_at
    from moved m
   where q.id = m.id and m.status in ('pending', 'processing');

  changes := array(
    select row(n.id, n.user_id, n.batch_id, o.status, n.status, n.credit_cost,
               n.generated_image_url, n.style_key)::private.generation_change
      from new_rows n join old_rows o on o.id = n.id
     where n.status is distinct from o.status);
  if cardinality(changes) > 0 then
    perform private.apply_generation_changes(changes);
  end if;
  return null;
end
$$;

-- Pending items are queued by their tag trigger; items inserted already processing (an
-- operator's or a test's rows) are queued here.
create or replace function private.on_generations_inserted() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  insert into private.generation_queue
    (id, status, user_id, batch_id, position, fair_tag, queued_at, run_after, lease_expires_at)
  select n.id, n.status, n.user_id, n.batch_id, n.position, n.fair_tag, n.queued_at,
         n.run_after, n.lease_expires_at
    from new_rows n
   where n.status = 'processing';
  perform private.apply_generation_changes(array(
    select row(n.id, n.user_id, n.batch_id, null, n.status, n.credit_cost,
               n.generated_image_url, n.style_key)::private.generation_change
      from new_rows n));
  return null;
end
$$;

create or replace function private.on_generations_deleted() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  delete from private.generation_queue q
   using old_rows o
   where q.id = o.id and o.status in ('pending', 'processing');
  perform private.apply_generation_changes(array(
    select row(o.id, o.user_id, o.batch_id, o.status, null, o.credit_cost,
               o.generated_image_url, o.style_key)::private.generation_change
      from old_rows o));
  return null;
end
$$;

-- Claim up to max_items runnable items in fair-tag order, leased to worker_id: the queue's
-- fair index read in order, each candidate's item locked with SKIP LOCKED (an item another
-- writer holds is left for the next claim, never waited for). Its queue row is then
-- changed by the trigger, after the item, as every writer does: two claims that read the
-- same candidates split them at the item's lock, as they did when the queue was in
-- generations.
create or replace function public.claim_generations(
  worker_id text,
  max_items integer default 10,
  lease_seconds integer default null,
  max_running_per_user integer default null
) returns table (
  id uuid,
  batch_id uuid,
  user_id uuid,
  style_key text,
  generator text,
  model text,
  prompt text,
  custom_prompt text,
  source_image_path text,
  attempts integer,
  max_attempts integer,
  lease_expires_at timestamptz
)
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
  lease interval := make_interval(
    secs => coalesce(lease_seconds, private.setting_int('default_lease_seconds')));
begin
  perform private.require_worker_id(worker_id);
  if max_items is null or max_items not between 1 and 1000 then
    perform private.raise_error('invalid_input', 400, 'max_items must be between 1 and 1000.',
      jsonb_build_object('field', 'max_items'));
  end if;
  if lease <= interval '0' then
    perform private.raise_error('invalid_input', 400, 'lease_seconds must be positive.',
      jsonb_build_object('field', 'lease_seconds'));
  end if;

  return query
  with chosen as (
    select q.id from private.generation_queue q
      join public.generations g on g.id = q.id
     where q.status = 'pending' and q.run_after <= now() and g.status = 'pending'
     order by q.fair_tag, q.queued_at, q.batch_id, q.position
     limit max_items
       for update of g skip locked
  ), claimed as (
    update public.generations g
       set status = 'processing',
           attempts = g.attempts + 1,
           started_at = now(),
           finished_at = null,
           lease_owner = claim_generations.worker_id,
           lease_expires_at = now() + lease,
           updated_at = now()
     where g.id = any (array(select c.id from chosen c))
    returning g.id, g.batch_id, g.user_id, g.style_key, g.custom_prompt, g.attempts,
              g.max_attempts, g.lease_expires_at, g.fair_tag, g.queued_at, g.position
  )
  select c.id, c.batch_id, c.user_id, c.style_key, s.generator, s.model,
         replace(s.prompt_template, '{prompt}', coalesce(c.custom_prompt, '')),
         c.custom_prompt, b.original_image_url, c.attempts, c.max_attempts, c.lease_expires_at
    from claimed c
    join public.styles s on s.key = c.style_key
    join public.generation_batches b on b.id = c.batch_id
   order by c.fair_tag, c.queued_at, c.batch_id, c.position;
end
$$;

-- Items whose worker died go back to pending, or end failed when that was their last
-- attempt: found through the queue's lease index, the items locked with SKIP LOCKED.
create or replace function public.recover_expired_leases() returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  requeued integer;
  failed integer;
begin
  with expired as (
    select q.id from private.generation_queue q
      join public.generations g on g.id = q.id
     where q.status = 'processing' and q.lease_expires_at < now()
       and g.status = 'processing' and g.lease_expires_at < now()
     order by q.lease_expires_at
       for update of g skip locked
  ), moved as (
    update public.generations g
       set status = case when g.attempts < g.max_attempts then 'pending' else 'failed' end
                      ::public.generation_status,
           run_after = now(),
           finished_at = case when g.attempts < g.max_attempts then null else now() end,
           last_error = 'lease expired: the worker stopped answering',
           lease_owner = null, lease_expires_at = null, updated_at = now()
      from expired e
     where g.id = e.id
    returning g.status
  )
  select count(*) filter (where moved.status = 'pending'),
         count(*) filter (where moved.status = 'failed')
    into requeued, failed
    from moved;
  return jsonb_build_object('requeued', requeued, 'failed', failed);
end
$$;

-- The heartbeat and the completion find their items by primary key (`g.id = any (ids)`)
-- and look each one's path and attempt up in a jsonb object built from the call's arrays,
-- instead of joining the arrays unnested: the planner takes a worker's running items for
-- about one row (few are running when the table is analyzed), so it joined them to the
-- unnested list in a nested loop, one pass over the list per item (27 ms for 400 items;
-- the whole table read when nothing else was indexed).

-- Renew the leases of a worker's running items (as in the fair-queue migration).
create or replace function public.heartbeat_generations(
  worker_id text,
  generation_ids uuid[],
  lease_seconds integer default null,
  attempts integer[] default null
) returns uuid[]
language plpgsql
security definer
set search_path = ''
as $$
declare
  renewed uuid[];
  tries jsonb;
begin
  perform private.require_worker_id(worker_id);
  if heartbeat_generations.attempts is not null
     and cardinality(heartbeat_generations.attempts) is distinct from cardinality(generation_ids) then
    perform private.raise_error('invalid_input', 400, 'attempts must pair up with generation_ids.',
      jsonb_build_object('field', 'attempts'));
  end if;
  -- Each item's attempt, by id, built once (a subquery in the UPDATE's FROM was rebuilt
  -- for every row).
  tries := (select jsonb_object_agg(h.id, h.attempt)
              from unnest(generation_ids, heartbeat_generations.attempts) as h(id, attempt)
             where h.id is not null);
  perform private.lock_generations(generation_ids);
  with r as (
    update public.generations g
       set lease_expires_at = now() + make_interval(
             secs => coalesce(lease_seconds, private.setting_int('default_lease_seconds'))),
           updated_at = now()
     where g.id = any (generation_ids) and g.status = 'processing'
       and g.lease_owner = heartbeat_generations.worker_id
       and g.attempts = coalesce((tries ->> g.id::text)::integer, g.attempts)
    returning g.id
  )
  select coalesce(array_agg(r.id), '{}') into renewed from r;
  return renewed;
end
$$;

-- Which of `paths` (their places, from 1) are not well-formed paths in the folder of the
-- owner at the same place in `owners`: "a well-formed path in its owner's folder" for a
-- whole list in one call. A call per path cost more than the rest of a completion (a SQL
-- function with its own search_path is never inlined), and so did private.path_problem's
-- dozen checks: the usual shape (the owner's folder, then segments that start with a
-- letter, digit, - or _ and hold only those and dots) passes one pattern, which accepts
-- nothing path_problem refuses, and only another shape pays for path_problem.
create function private.outside_folders(paths text[], owners uuid[]) returns integer[]
language sql immutable
set search_path = ''
as $$
  select coalesce(array_agg(r.n::integer order by r.n), '{}')
    from unnest(paths, owners) with ordinality as r(path, owner, n)
   where not coalesce(
           starts_with(r.path, r.owner::text || '/')
           and ((char_length(r.path) <= 1024
                 and r.path ~ '^[^/]+(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$')
                or private.path_problem(r.path) is null),
           false)
$$;

-- One path (delete_batch's check of what it returns), by the same rule.
create or replace function private.in_folder(path text, owner uuid) returns boolean
language sql immutable
set search_path = ''
as $$
  select private.outside_folders(array[path], array[owner]) = '{}'
$$;

revoke all on function private.outside_folders(text[], uuid[]) from public, anon, authenticated;

-- Record results. Also accepted: an item already completed with exactly this path, so a
-- flush resent after its answer was lost (the commit happened) is not mistaken for a
-- discarded result, whose image the worker would then delete. Result paths carry the
-- attempt, so another attempt's image never has the same path. Only the ids not accepted
-- just now are looked up for that (usually none), by primary key.
create or replace function public.complete_generations(
  worker_id text,
  generation_ids uuid[],
  image_paths text[],
  attempts integer[] default null
) returns uuid[]
language plpgsql
security definer
set search_path = ''
as $$
declare
  accepted uuid[];
  bad uuid[];
  paths jsonb;
  tries jsonb;
begin
  perform private.require_worker_id(worker_id);
  if array_ndims(generation_ids) > 1 or array_ndims(image_paths) > 1
     or cardinality(generation_ids) is distinct from cardinality(image_paths)
     or array_position(image_paths, null) is not null
     or (complete_generations.attempts is not null
         and cardinality(complete_generations.attempts)
             is distinct from cardinality(generation_ids)) then
    perform private.raise_error('invalid_input', 400,
      'generation_ids, image_paths (and attempts) must pair up, with no null path.',
      jsonb_build_object('field', 'image_paths'));
  end if;
  with listed as (
    select array_agg(r.id) as ids, array_agg(r.path) as paths, array_agg(g.user_id) as owners
      from unnest(generation_ids, image_paths) as r(id, path)
      join public.generations g on g.id = r.id
     where g.id = any (generation_ids)
  )
  select array_agg(l.ids[o.n] order by l.ids[o.n]) into bad
    from listed l, unnest(private.outside_folders(l.paths, l.owners)) as o(n);
  if bad is not null then
    perform private.raise_error('invalid_input', 400,
      'Each image path must be a well-formed path in its owner''s folder.',
      jsonb_build_object('field', 'image_paths', 'generation_ids', to_jsonb(bad)));
  end if;
  -- Each item's path and attempt, by id, built once (a subquery in the UPDATE's FROM was
  -- rebuilt for every row).
  select jsonb_object_agg(r.id, r.path), jsonb_object_agg(r.id, r.attempt) into paths, tries
    from unnest(generation_ids, image_paths, complete_generations.attempts)
           as r(id, path, attempt)
   where r.id is not null;
  perform private.lock_generations(generation_ids);
  with done as (
    update public.generations g
       set status = 'completed', generated_image_url = paths ->> g.id::text,
           finished_at = now(), last_error = null, lease_owner = null, lease_expires_at = null,
           updated_at = now()
     where g.id = any (generation_ids) and g.status = 'processing'
       and g.lease_owner = complete_generations.worker_id
       and g.attempts = coalesce((tries ->> g.id::text)::integer, g.attempts)
    returning g.id
  )
  select coalesce(array_agg(done.id), '{}') into accepted from done;
  if cardinality(accepted) < cardinality(generation_ids) then
    select accepted || coalesce(array_agg(g.id), '{}') into accepted
      from unnest(generation_ids, image_paths) as r(id, path)
      join public.generations g on g.id = r.id
     where g.id = any (generation_ids) and r.id <> all (accepted)
       and g.status = 'completed' and g.generated_image_url = r.path;
  end if;
  return accepted;
end
$$;

-- Refunds of one statement can span users (recovered leases): their profiles are locked
-- in id order before the balances change, the last step of the lock order.
create or replace function private.apply_generation_changes(changes private.generation_change[])
returns void
language plpgsql
set search_path = ''
as $$
declare
  batch_ids uuid[];
  refunds private.generation_change[];
begin
  if exists (
    select from unnest(changes) c
     where c.from_status is not null and c.to_status is not null
       and (c.from_status::text || '>' || c.to_status::text) <> all (array[
             'pending>processing', 'pending>cancelled', 'processing>completed',
             'processing>failed', 'processing>pending', 'processing>cancelled',
             'failed>pending'])
  ) then
    raise exception 'invalid generation status transition' using errcode = '23514';
  end if;

  select array_agg(distinct c.batch_id order by c.batch_id) into batch_ids from unnest(changes) c;
  if cardinality(batch_ids) > 1 then
    perform from public.generation_batches b
     where b.id = any (batch_ids) order by b.id for no key update;
  end if;

  with per_batch as (
    select c.batch_id,
           (count(*) filter (where c.to_status = 'pending')
             - count(*) filter (where c.from_status = 'pending'))::integer as d_pending,
           (count(*) filter (where c.to_status = 'processing')
             - count(*) filter (where c.from_status = 'processing'))::integer as d_processing,
           (count(*) filter (where c.to_status = 'completed')
             - count(*) filter (where c.from_status = 'completed'))::integer as d_completed,
           (count(*) filter (where c.to_status = 'failed')
             - count(*) filter (where c.from_status = 'failed'))::integer as d_failed,
           (count(*) filter (where c.to_status = 'cancelled')
             - count(*) filter (where c.from_status = 'cancelled'))::integer as d_cancelled,
           (count(*) filter (where c.from_status is null)
             - count(*) filter (where c.to_status is null))::integer as d_total,
           (array_agg(c.image_url order by c.id) filter (where c.to_status = 'completed'))[1] as cover_url,
           (array_agg(c.style_key order by c.id) filter (where c.to_status = 'completed'))[1] as cover_style
      from unnest(changes) c
     group by c.batch_id
  )
  update public.generation_batches b
     set pending_count = b.pending_count + p.d_pending,
         processing_count = b.processing_count + p.d_processing,
         completed_count = b.completed_count + p.d_completed,
         failed_count = b.failed_count + p.d_failed,
         cancelled_count = b.cancelled_count + p.d_cancelled,
         total_count = b.total_count + p.d_total,
         -- private.derive_batch_status, written out: a call per batch row cost more
         -- than the rest of this update (its `set search_path` keeps it from being
         -- inlined). tests/sqlapi check the two agree for every combination.
         status = (case
           when b.processing_count + p.d_processing = 0
                and b.completed_count + p.d_completed + b.failed_count + p.d_failed
                    + b.cancelled_count + p.d_cancelled = 0 then 'pending'
           when b.pending_count + p.d_pending + b.processing_count + p.d_processing > 0
             then 'processing'
           when b.completed_count + p.d_completed > 0 and b.failed_count + p.d_failed > 0
             then 'partial'
           when b.completed_count + p.d_completed > 0 then 'completed'
           when b.failed_count + p.d_failed > 0 then 'failed'
           else 'cancelled'
         end)::public.batch_status,
         cover_image_url = coalesce(b.cover_image_url, p.cover_url),
         cover_style_key = case when b.cover_image_url is null then p.cover_style
                                else b.cover_style_key end,
         finished_at = case
           when b.pending_count + p.d_pending + b.processing_count + p.d_processing > 0 then null
           else coalesce(b.finished_at, now()) end,
         updated_at = now()
    from per_batch p
   where b.id = p.batch_id;

  -- One refund per item that newly ended failed or cancelled: its own cost, exactly once.
  refunds := array(
    select c from unnest(changes) c
     where c.to_status in ('failed', 'cancelled')
       and (c.from_status is null or c.from_status not in ('failed', 'cancelled'))
       and c.credit_cost > 0);
  if cardinality(refunds) = 0 then
    return;
  end if;
  insert into public.credit_ledger (user_id, kind, delta, batch_id, generation_id, note)
  select c.user_id, 'refund', c.credit_cost, c.batch_id, c.id, 'generation ' || c.to_status
    from unnest(refunds) c;
  perform from public.profiles p
   where p.id = any (array(select c.user_id from unnest(refunds) c))
   order by p.id for no key update;
  update public.profiles p
     set total_credits = p.total_credits + r.amount, updated_at = now()
    from (select c.user_id, sum(c.credit_cost)::integer as amount
            from unnest(refunds) c group by c.user_id) r
   where p.id = r.user_id;
end
$$;

-- The items a worker holds, counted through the queue's rows (generations has no index
-- on leases any more; running items are few).
create or replace function public.list_workers(include_stopped boolean default false)
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
         (select count(*)::integer from private.generation_queue q
            join public.generations g on g.id = q.id
           where q.status = 'processing' and g.status = 'processing'
             and g.lease_owner = w.worker_id),
         w.stats, w.started_at, w.last_seen_at, w.stopped_at
    from private.workers w
   where include_stopped or (w.stopped_at is null and w.expires_at > now())
   order by (w.stopped_at is null and w.expires_at > now()) desc, w.started_at, w.worker_id
$$;

revoke all on function private.on_generations_updated(), private.on_generations_inserted(),
  private.on_generations_deleted()
  from public, anon, authenticated;

-- One notification per changed batch, as before, from one statement instead of one per
-- batch (a claim in fair order changes as many batches as it takes items).
create or replace function private.notify_batch_changes() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform pg_notify('portraitkit_batches', d.id::text)
     from (select distinct n.id from new_rows n) d;
  return null;
end
$$;
