-- Batches and their generations (one per style), and the trigger that keeps batch
-- counters and status exact.
--
-- The counters are maintained by statement-level triggers with transition tables: each
-- statement adds its per-status deltas to its batches' counters in one UPDATE, so the
-- cost per status change is O(1) whatever the batch size, and concurrent changes to one
-- batch serialise on the batch row (READ COMMITTED re-reads the latest counters before
-- adding: no lost update). Nothing ever re-counts a batch.

create type public.batch_status as enum
  ('pending', 'processing', 'completed', 'partial', 'failed', 'cancelled');
create type public.generation_status as enum
  ('pending', 'processing', 'completed', 'failed', 'cancelled');

create table public.generation_batches (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references public.profiles (id) on delete cascade,
  original_image_url text not null check (char_length(original_image_url) between 1 and 1024),
  custom_prompt text,
  status public.batch_status not null default 'pending',
  total_count integer not null default 0,
  pending_count integer not null default 0,
  processing_count integer not null default 0,
  completed_count integer not null default 0,
  failed_count integer not null default 0,
  cancelled_count integer not null default 0,
  credits_charged integer not null default 0,
  -- The first result to complete: the gallery's cover, kept by the trigger.
  cover_image_url text,
  cover_style_key text,
  idempotency_key text check (char_length(idempotency_key) between 1 and 200),
  request_fingerprint text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  finished_at timestamptz,
  constraint generation_batches_counts_add_up check (
    total_count = pending_count + processing_count + completed_count + failed_count + cancelled_count
    and least(pending_count, processing_count, completed_count, failed_count, cancelled_count) >= 0
  )
);

create index generation_batches_user_created_idx
  on public.generation_batches (user_id, created_at desc, id desc);
create index generation_batches_user_status_created_idx
  on public.generation_batches (user_id, status, created_at desc, id desc);
create unique index generation_batches_idempotency_idx
  on public.generation_batches (user_id, idempotency_key) where idempotency_key is not null;

create table public.generations (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references public.profiles (id) on delete cascade,
  batch_id uuid not null references public.generation_batches (id) on delete cascade,
  style_key text not null references public.styles (key),
  position smallint not null,
  status public.generation_status not null default 'pending',
  custom_prompt text,
  credit_cost integer not null check (credit_cost >= 0),
  generated_image_url text,
  attempts integer not null default 0 check (attempts >= 0),
  max_attempts integer not null check (max_attempts >= 1),
  last_error text,
  queued_at timestamptz not null default now(),
  run_after timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  lease_owner text,
  lease_expires_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (batch_id, position)
);

-- (batch_id, position) is covered by the unique constraint's index.
-- (user_id, batch_id), not (user_id) alone: RLS adds user_id = (select auth.uid()) to every
-- read of a batch's items, and with user_id alone the planner ANDs the user's whole index
-- range with the batch's (200,000 entries per batch for a heavy user). It also covers the
-- user_id foreign key and batch_stats.
create index generations_user_batch_idx on public.generations (user_id, batch_id);
create index generations_style_key_idx on public.generations (style_key);
-- The queue: claims walk this partial index oldest first and never touch finished rows.
create index generations_pending_queue_idx
  on public.generations (queued_at, batch_id, position) where status = 'pending';
create index generations_processing_lease_idx
  on public.generations (lease_expires_at) where status = 'processing';
create index generations_processing_user_idx
  on public.generations (user_id) where status = 'processing';

-- A batch's status follows from its counters alone (see the lifecycle doc).
create function private.derive_batch_status(
  pending integer, processing integer, completed integer, failed integer, cancelled integer
) returns public.batch_status
language sql immutable
set search_path = ''
as $$
  select case
    when pending + processing + completed + failed + cancelled = 0 then 'pending'
    when processing = 0 and completed + failed + cancelled = 0 then 'pending'
    when pending + processing > 0 then 'processing'
    when completed > 0 and failed > 0 then 'partial'
    when completed > 0 then 'completed'
    when failed > 0 then 'failed'
    else 'cancelled'
  end::public.batch_status
$$;

-- One generation's status change within a statement; from_status is null for an insert,
-- to_status null for a delete.
create type private.generation_change as (
  id uuid,
  user_id uuid,
  batch_id uuid,
  from_status public.generation_status,
  to_status public.generation_status,
  credit_cost integer,
  image_url text,
  style_key text
);

-- Apply one statement's status changes: batch counters, status and cover in one UPDATE
-- per batch, and one refund per item that ended failed or cancelled. This function is
-- the only writer of batch counters.
create function private.apply_generation_changes(changes private.generation_change[])
returns void
language plpgsql
set search_path = ''
as $$
declare
  batch_ids uuid[];
begin
  -- The lifecycle's allowed moves (docs/contract.md); anything else is a bug in a writer.
  -- Written inline: a SQL function with a pinned search_path is never inlined, and calling
  -- one per row cost more than the rest of this trigger.
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

  -- Lock the batch rows in id order first when a statement spans several batches,
  -- so two bulk statements can never deadlock on each other's batches.
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
  -- Every new value is written as "column + delta" against b itself: under concurrent
  -- updates READ COMMITTED re-reads the latest row version before applying them, so no
  -- change is lost (values computed from a snapshot in a CTE would be).
  update public.generation_batches b
     set pending_count = b.pending_count + p.d_pending,
         processing_count = b.processing_count + p.d_processing,
         completed_count = b.completed_count + p.d_completed,
         failed_count = b.failed_count + p.d_failed,
         cancelled_count = b.cancelled_count + p.d_cancelled,
         total_count = b.total_count + p.d_total,
         status = private.derive_batch_status(
           b.pending_count + p.d_pending, b.processing_count + p.d_processing,
           b.completed_count + p.d_completed, b.failed_count + p.d_failed,
           b.cancelled_count + p.d_cancelled),
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
  insert into public.credit_ledger (user_id, kind, delta, batch_id, generation_id, note)
  select c.user_id, 'refund', c.credit_cost, c.batch_id, c.id, 'generation ' || c.to_status
    from unnest(changes) c
   where c.to_status in ('failed', 'cancelled')
     and (c.from_status is null or c.from_status not in ('failed', 'cancelled'))
     and c.credit_cost > 0;
  if found then
    update public.profiles p
       set total_credits = p.total_credits + r.amount, updated_at = now()
      from (select c.user_id, sum(c.credit_cost)::integer as amount
              from unnest(changes) c
             where c.to_status in ('failed', 'cancelled')
               and (c.from_status is null or c.from_status not in ('failed', 'cancelled'))
               and c.credit_cost > 0
             group by c.user_id) r
     where p.id = r.user_id;
  end if;
end
$$;

create function private.on_generations_inserted() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform private.apply_generation_changes(array(
    select row(n.id, n.user_id, n.batch_id, null, n.status, n.credit_cost,
               n.generated_image_url, n.style_key)::private.generation_change
      from new_rows n));
  return null;
end
$$;

create function private.on_generations_updated() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  changes private.generation_change[];
begin
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

create function private.on_generations_deleted() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform private.apply_generation_changes(array(
    select row(o.id, o.user_id, o.batch_id, o.status, null, o.credit_cost,
               o.generated_image_url, o.style_key)::private.generation_change
      from old_rows o));
  return null;
end
$$;

create trigger generations_track_inserts
  after insert on public.generations
  referencing new table as new_rows
  for each statement execute function private.on_generations_inserted();
create trigger generations_track_updates
  after update on public.generations
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.on_generations_updated();
create trigger generations_track_deletes
  after delete on public.generations
  referencing old table as old_rows
  for each statement execute function private.on_generations_deleted();

-- The seed app's view, kept column for column. security_invoker: RLS of the caller applies.
-- Items are read per batch (a correlated subquery), so a page of it only touches the
-- page's batches.
create view public.batch_generations_view
with (security_invoker = true) as
select b.id as batch_id,
       b.user_id,
       b.original_image_url,
       b.status as batch_status,
       b.total_count,
       b.completed_count,
       b.created_at,
       b.updated_at,
       coalesce((
         select json_agg(json_build_object(
                  'id', g.id,
                  'style_key', g.style_key,
                  'generated_image_url', g.generated_image_url,
                  'status', g.status,
                  'created_at', g.created_at) order by g.position)
           from public.generations g
          where g.batch_id = b.id
       ), '[]'::json) as generations
  from public.generation_batches b;

-- Row level security: owners read; every write goes through the contract's functions.
alter table public.generation_batches enable row level security;
alter table public.generations enable row level security;

create policy generation_batches_select_own on public.generation_batches
  for select to authenticated
  using (user_id = (select auth.uid()));

create policy generations_select_own on public.generations
  for select to authenticated
  using (user_id = (select auth.uid()));

revoke all on public.generation_batches, public.generations, public.batch_generations_view
  from anon, authenticated, service_role;
grant select on public.generation_batches, public.generations, public.batch_generations_view
  to authenticated;
grant select on public.generation_batches, public.generations, public.batch_generations_view
  to service_role;

revoke all on all functions in schema private from public, anon, authenticated;
