-- A fair queue that never idles: claims take items in fair-tag order (start-time fair
-- queueing) instead of arrival order with a hard per-user cap.
--
-- The first release claimed the oldest pending items and skipped those of users already
-- holding max_running_per_user running ones, looking at only max_items*4 candidates: a
-- user with a large backlog filled the window and every claim came back empty, so other
-- users' new batches waited, and a user alone was held to the cap.
--
-- Now each pending item carries a fair tag, given when it becomes pending:
--   tag = greatest(V, the user's highest pending tag + 1)
-- where V, the queue's virtual time, is the lowest tag still waiting. A user's items are
-- thus spread one per round, and a user who arrives (or comes back) starts at the current
-- round instead of behind everyone's backlog. Claims read one partial index in tag order,
-- so a claim costs the same with 100,000 pending items of 10,000 users as with ten, and it
-- is work-conserving: a user alone gets every free slot. Items that go back to pending after
-- running (a retryable failure, a lost lease, a release) keep their tag: they are next.

alter table public.generations add column fair_tag bigint not null default 0;

comment on column public.generations.fair_tag is
  'Queue order among pending items (start-time fair queueing across users); set by trigger.';

-- Items already waiting or running get tags round-robin per user, oldest first.
update public.generations g
   set fair_tag = r.tag
  from (select q.id, row_number() over (partition by q.user_id
                                        order by q.queued_at, q.batch_id, q.position) as tag
          from public.generations q
         where q.status in ('pending', 'processing')) r
 where g.id = r.id;

create index generations_fair_queue_idx
  on public.generations (fair_tag, queued_at, batch_id, position) where status = 'pending';
create index generations_user_fair_idx
  on public.generations (user_id, fair_tag) where status = 'pending';
-- Claims no longer read these: arrival order, and running items per user for the cap.
drop index public.generations_pending_queue_idx;
drop index public.generations_processing_user_idx;

-- The tag for a user's next pending item. Rows inserted earlier by the same statement are
-- visible here (row-level BEFORE trigger), so a batch's items get consecutive tags.
create function private.next_fair_tag(owner uuid) returns bigint
language sql volatile
set search_path = ''
as $$
  select greatest(
    coalesce((select g.fair_tag from public.generations g
               where g.status = 'pending' and g.run_after <= now()
               order by g.fair_tag limit 1), 0),
    coalesce((select max(g.fair_tag) + 1 from public.generations g
               where g.user_id = owner and g.status = 'pending'), 0))
$$;

create function private.assign_fair_tag() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.fair_tag := private.next_fair_tag(new.user_id);
  return new;
end
$$;

create trigger generations_fair_tag_on_insert
  before insert on public.generations
  for each row when (new.status = 'pending')
  execute function private.assign_fair_tag();

-- A retried batch is new work: it queues like a new batch of its user's.
create trigger generations_fair_tag_on_retry
  before update of status on public.generations
  for each row when (old.status = 'failed' and new.status = 'pending')
  execute function private.assign_fair_tag();

-- Claim up to max_items runnable items in fair-tag order, leased to worker_id.
-- max_running_per_user is accepted for workers of the first release and ignored: fairness
-- now comes from the tags, and a cap would idle free slots.
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
-- A custom plan costs ~0.6 ms of planning per claim at 100,000 pending items (PL/pgSQL
-- replans while the generic plan's LIMIT estimate looks worse); the generic plan reads the
-- same fair-queue index (benchmarks/fairness.py).
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
    select g.id from public.generations g
     where g.status = 'pending' and g.run_after <= now()
     order by g.fair_tag, g.queued_at, g.batch_id, g.position
     limit max_items
       for update skip locked
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

-- A lease names the attempt as well as the worker: a worker that claims an item again
-- (its own recovery put it back) must not have the first attempt's late result or failure
-- recorded against the second. Calls pass the attempts they claimed; without them (first-
-- release workers) only the worker is checked, as before.
--
-- Record results. Also accepted: an item already completed with exactly this path, so a
-- flush resent after its answer was lost (the commit happened) is not mistaken for a
-- discarded result, whose image the worker would then delete. Result paths carry the
-- attempt, so another attempt's image never has the same path.
drop function public.complete_generations(text, uuid[], text[]);
create function public.complete_generations(
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
  repeated uuid[];
  bad uuid[];
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
  select array_agg(g.id order by g.id) into bad
    from unnest(generation_ids, image_paths) as r(id, path)
    join public.generations g on g.id = r.id
   where not private.in_folder(r.path, g.user_id);
  if bad is not null then
    perform private.raise_error('invalid_input', 400,
      'Each image path must be a well-formed path in its owner''s folder.',
      jsonb_build_object('field', 'image_paths', 'generation_ids', to_jsonb(bad)));
  end if;
  perform private.lock_generations(generation_ids);
  select coalesce(array_agg(g.id), '{}') into repeated
    from unnest(generation_ids, image_paths) as r(id, path)
    join public.generations g on g.id = r.id
   where g.status = 'completed' and g.generated_image_url = r.path;
  with done as (
    update public.generations g
       set status = 'completed', generated_image_url = r.path, finished_at = now(),
           last_error = null, lease_owner = null, lease_expires_at = null, updated_at = now()
      from unnest(generation_ids, image_paths, complete_generations.attempts) as r(id, path, attempt)
     where g.id = r.id and g.status = 'processing'
       and g.lease_owner = complete_generations.worker_id
       and (r.attempt is null or g.attempts = r.attempt)
    returning g.id
  )
  select coalesce(array_agg(done.id), '{}') || repeated into accepted from done;
  return accepted;
end
$$;

create or replace function public.complete_generation(
  worker_id text,
  generation_id uuid,
  image_path text
) returns boolean
language sql
security definer
set search_path = ''
as $$
  select cardinality(public.complete_generations(worker_id, array[generation_id], array[image_path])) = 1
$$;

drop function public.heartbeat_generations(text, uuid[], integer);
create function public.heartbeat_generations(
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
begin
  perform private.require_worker_id(worker_id);
  if heartbeat_generations.attempts is not null
     and cardinality(heartbeat_generations.attempts) is distinct from cardinality(generation_ids) then
    perform private.raise_error('invalid_input', 400, 'attempts must pair up with generation_ids.',
      jsonb_build_object('field', 'attempts'));
  end if;
  perform private.lock_generations(generation_ids);
  with r as (
    update public.generations g
       set lease_expires_at = now() + make_interval(
             secs => coalesce(lease_seconds, private.setting_int('default_lease_seconds'))),
           updated_at = now()
      from unnest(generation_ids, heartbeat_generations.attempts) as h(id, attempt)
     where g.id = h.id and g.status = 'processing'
       and g.lease_owner = heartbeat_generations.worker_id
       and (h.attempt is null or g.attempts = h.attempt)
    returning g.id
  )
  select coalesce(array_agg(r.id), '{}') into renewed from r;
  return renewed;
end
$$;

drop function public.fail_generation(text, uuid, text, boolean);
create function public.fail_generation(
  worker_id text,
  generation_id uuid,
  error text,
  retryable boolean default true,
  attempt integer default null
) returns public.generation_status
language plpgsql
security definer
set search_path = ''
as $$
declare
  new_status public.generation_status;
begin
  perform private.require_worker_id(worker_id);
  update public.generations g
     set status = case when retryable and g.attempts < g.max_attempts
                       then 'pending' else 'failed' end::public.generation_status,
         run_after = case when retryable and g.attempts < g.max_attempts
                          then now() + private.retry_delay(g.attempts) else g.run_after end,
         finished_at = case when retryable and g.attempts < g.max_attempts then null else now() end,
         last_error = left(coalesce(error, 'unknown error'), 2000),
         lease_owner = null, lease_expires_at = null, updated_at = now()
   where g.id = generation_id and g.status = 'processing'
     and g.lease_owner = fail_generation.worker_id
     and (fail_generation.attempt is null or g.attempts = fail_generation.attempt)
  returning g.status into new_status;
  return new_status;
end
$$;

revoke all on function
  public.complete_generations(text, uuid[], text[], integer[]),
  public.heartbeat_generations(text, uuid[], integer, integer[]),
  public.fail_generation(text, uuid, text, boolean, integer)
  from public, anon, authenticated;
grant execute on function
  public.complete_generations(text, uuid[], text[], integer[]),
  public.heartbeat_generations(text, uuid[], integer, integer[]),
  public.fail_generation(text, uuid, text, boolean, integer)
  to service_role;

revoke all on function private.next_fair_tag(uuid), private.assign_fair_tag()
  from public, anon, authenticated;
