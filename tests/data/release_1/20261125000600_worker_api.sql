-- The worker's SQL API, for service_role only: claim with a lease, heartbeat, complete,
-- fail, release, recover expired leases; and credit grants for operators.
--
-- A result is accepted only from the worker that holds the item's lease while the item is
-- still processing; anything else (cancelled, deleted, lease lost) is discarded by
-- returning nothing, never an error, so a late worker simply drops its result.

create function private.retry_delay(attempt integer) returns interval
language sql volatile
set search_path = ''
as $$
  -- Exponential backoff with full jitter in [50%, 100%] of the capped delay.
  select make_interval(secs => least(
           private.setting_int('retry_max_seconds')::double precision,
           private.setting_int('retry_base_seconds') * power(2, greatest(attempt - 1, 0)))
         * (0.5 + random() / 2))
$$;

create function private.require_worker_id(worker_id text) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if worker_id is null or char_length(worker_id) not between 1 and 200 then
    perform private.raise_error('invalid_input', 400, 'worker_id must be 1 to 200 characters.',
      jsonb_build_object('field', 'worker_id'));
  end if;
end
$$;

-- Claim up to max_items runnable generations, oldest first, leased to worker_id.
--
-- FOR UPDATE SKIP LOCKED over the partial pending index: concurrent workers never wait
-- on each other nor get the same item. With max_running_per_user, no user holds more
-- than that many processing items, so one large batch cannot starve everyone else.
create function public.claim_generations(
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
  with candidates as (
    select g.id, g.user_id, g.queued_at, g.batch_id, g.position
      from public.generations g
     where g.status = 'pending' and g.run_after <= now()
     order by g.queued_at, g.batch_id, g.position
     limit case when max_running_per_user is null then max_items else max_items * 4 end
       for update skip locked
  ), ranked as (
    select c.id, c.queued_at, c.batch_id, c.position,
           case when max_running_per_user is null then 0
                else row_number() over (partition by c.user_id
                                        order by c.queued_at, c.batch_id, c.position)
                     + (select count(*) from public.generations r
                         where r.user_id = c.user_id and r.status = 'processing') end as slot
      from candidates c
  ), chosen as (
    select r.id from ranked r
     where max_running_per_user is null or r.slot <= max_running_per_user
     order by r.queued_at, r.batch_id, r.position
     limit max_items
  )
  , claimed as (
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
              g.max_attempts, g.lease_expires_at, g.queued_at, g.position
  )
  select c.id, c.batch_id, c.user_id, c.style_key, s.generator, s.model,
         replace(s.prompt_template, '{prompt}', coalesce(c.custom_prompt, '')),
         c.custom_prompt, b.original_image_url, c.attempts, c.max_attempts, c.lease_expires_at
    from claimed c
    join public.styles s on s.key = c.style_key
    join public.generation_batches b on b.id = c.batch_id
   order by c.queued_at, c.batch_id, c.position;
end
$$;

-- Renew the leases the worker still holds; returns the ids it holds (a missing id means
-- the item was cancelled, deleted or recovered: stop working on it).
create function public.heartbeat_generations(
  worker_id text,
  generation_ids uuid[],
  lease_seconds integer default null
) returns uuid[]
language plpgsql
security definer
set search_path = ''
as $$
declare
  renewed uuid[];
begin
  perform private.require_worker_id(worker_id);
  with r as (
    update public.generations g
       set lease_expires_at = now() + make_interval(
             secs => coalesce(lease_seconds, private.setting_int('default_lease_seconds'))),
           updated_at = now()
     where g.id = any (generation_ids) and g.status = 'processing'
       and g.lease_owner = heartbeat_generations.worker_id
    returning g.id
  )
  select coalesce(array_agg(r.id), '{}') into renewed from r;
  return renewed;
end
$$;

-- Record finished results in one statement; returns the ids accepted (the others were no
-- longer this worker's to finish, and their results must be discarded).
create function public.complete_generations(
  worker_id text,
  generation_ids uuid[],
  image_paths text[]
) returns uuid[]
language plpgsql
security definer
set search_path = ''
as $$
declare
  accepted uuid[];
begin
  perform private.require_worker_id(worker_id);
  if cardinality(generation_ids) is distinct from cardinality(image_paths)
     or array_position(image_paths, null) is not null then
    perform private.raise_error('invalid_input', 400,
      'generation_ids and image_paths must pair up, with no null path.',
      jsonb_build_object('field', 'image_paths'));
  end if;
  with done as (
    update public.generations g
       set status = 'completed', generated_image_url = r.path, finished_at = now(),
           last_error = null, lease_owner = null, lease_expires_at = null, updated_at = now()
      from unnest(generation_ids, image_paths) as r(id, path)
     where g.id = r.id and g.status = 'processing'
       and g.lease_owner = complete_generations.worker_id
    returning g.id
  )
  select coalesce(array_agg(done.id), '{}') into accepted from done;
  return accepted;
end
$$;

create function public.complete_generation(
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

-- Record a failure. Retryable with attempts left: back to pending after a backoff.
-- Otherwise the item ends failed (and the trigger refunds it). Returns the new status,
-- or null when the item was no longer this worker's.
create function public.fail_generation(
  worker_id text,
  generation_id uuid,
  error text,
  retryable boolean default true
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
  returning g.status into new_status;
  return new_status;
end
$$;

-- Give claimed items back untouched (a worker shutting down): pending again, and the
-- attempt does not count.
create function public.release_generations(worker_id text, generation_ids uuid[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  released integer;
begin
  perform private.require_worker_id(worker_id);
  update public.generations g
     set status = 'pending', attempts = greatest(g.attempts - 1, 0), started_at = null,
         run_after = now(), lease_owner = null, lease_expires_at = null, updated_at = now()
   where g.id = any (generation_ids) and g.status = 'processing'
     and g.lease_owner = release_generations.worker_id;
  get diagnostics released = row_count;
  return released;
end
$$;

-- Items whose lease ran out (their worker died) go back to pending, or end failed when
-- that was their last attempt (the attempt was counted when they were claimed).
create function public.recover_expired_leases() returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  requeued integer;
  failed integer;
begin
  with expired as (
    select g.id from public.generations g
     where g.status = 'processing' and g.lease_expires_at < now()
     order by g.lease_expires_at
       for update skip locked
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

-- Give a user credits (support, purchases): recorded in the ledger as a grant.
create function public.grant_credits(user_id uuid, amount integer, note text default null)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
begin
  if amount is null or amount not between 1 and 1000000 then
    perform private.raise_error('invalid_input', 400, 'amount must be between 1 and 1000000.',
      jsonb_build_object('field', 'amount'));
  end if;
  if not exists (select from public.profiles p where p.id = grant_credits.user_id) then
    perform private.raise_error('profile_not_found', 404, 'No profile for this user.',
      jsonb_build_object('user_id', grant_credits.user_id));
  end if;
  return private.apply_credit_change(grant_credits.user_id, 'grant', amount, null, null,
                                     coalesce(note, 'granted'));
end
$$;

revoke all on function
  public.claim_generations(text, integer, integer, integer),
  public.heartbeat_generations(text, uuid[], integer),
  public.complete_generations(text, uuid[], text[]),
  public.complete_generation(text, uuid, text),
  public.fail_generation(text, uuid, text, boolean),
  public.release_generations(text, uuid[]),
  public.recover_expired_leases(),
  public.grant_credits(uuid, integer, text)
  from public, anon, authenticated;
grant execute on function
  public.claim_generations(text, integer, integer, integer),
  public.heartbeat_generations(text, uuid[], integer),
  public.complete_generations(text, uuid[], text[]),
  public.complete_generation(text, uuid, text),
  public.fail_generation(text, uuid, text, boolean),
  public.release_generations(text, uuid[]),
  public.recover_expired_leases(),
  public.grant_credits(uuid, integer, text)
  to service_role;

revoke all on all functions in schema private from public, anon, authenticated;
grant execute on function
  private.require_user(),
  private.raise_error(text, integer, text, jsonb, text),
  private.batch_summary(public.generation_batches),
  private.batch_summaries(public.generation_batches[])
  to authenticated, service_role;
