-- One check for "a well-formed path in its owner's folder", and refunds picked once.
--
-- private.in_folder replaces the same two conditions written out in delete_batch and
-- complete_generations; apply_generation_changes picks a statement's refunds once and
-- uses that list for the ledger rows, the profile locks (always in id order, even for one
-- user) and the balances, instead of repeating the filter three times. Behaviour is
-- unchanged; each function is replaced whole.

-- A well-formed path in ``owner``'s folder: what the contract accepts and returns.
create or replace function private.in_folder(path text, owner uuid) returns boolean
language sql immutable
set search_path = ''
as $$
  select private.path_problem(path) is null and starts_with(path, owner::text || '/')
$$;

revoke all on function private.in_folder(text, uuid) from public, anon, authenticated;

-- Delete a batch and its items; unfinished items are cancelled (and refunded) first.
-- Every item is locked up front, in id order: the cascading delete at the end would
-- otherwise lock them after the batch row, against the lock order.
-- Returns the stored paths the caller may remove: only well-formed paths in the caller's
-- own folder, whatever a row says.
create or replace function private.delete_batch(target uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  b public.generation_batches := private.own_batch(target, uid);
  refunded integer;
  paths text[];
begin
  perform private.lock_generations(array(
    select g.id from public.generations g where g.batch_id = b.id));
  with done as (
    update public.generations g
       set status = 'cancelled', finished_at = now(), updated_at = now(),
           lease_owner = null, lease_expires_at = null
     where g.batch_id = b.id and g.status in ('pending', 'processing')
    returning g.credit_cost
  )
  select coalesce(sum(done.credit_cost), 0) into refunded from done;
  select array_agg(g.generated_image_url order by g.position)
           filter (where private.in_folder(g.generated_image_url, uid))
    into paths from public.generations g where g.batch_id = b.id;
  delete from public.generation_batches g where g.id = b.id;
  return jsonb_build_object('batch_id', b.id, 'deleted', true, 'refunded', refunded,
    'original_image_url', case when private.in_folder(b.original_image_url, uid)
                               then b.original_image_url end,
    'image_paths', coalesce(to_jsonb(paths), '[]'::jsonb));
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

-- Record results. Also accepted: an item already completed with exactly this path, so a
-- flush resent after its answer was lost (the commit happened) is not mistaken for a
-- discarded result, whose image the worker would then delete. Result paths carry the
-- attempt, so another attempt's image never has the same path.
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
