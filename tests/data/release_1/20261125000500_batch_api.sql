-- The user-facing SQL API: what the app calls through PostgREST with the user's JWT, and
-- what portraitkit's Python client calls the same way.
--
-- Writers are SECURITY DEFINER (clients have no write grants) and check auth.uid()
-- themselves; readers are SECURITY INVOKER so RLS is the guard. Errors are raised through
-- private.raise_error with a stable code and an HTTP status (see README, "Errors").

create function private.require_user() returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  uid uuid := (select auth.uid());
begin
  if uid is null then
    perform private.raise_error('not_authenticated', 401,
      'Sign in first: this function acts for the signed-in user.');
  end if;
  return uid;
end
$$;

-- Pay once for several styles and get one batch holding one generation per style.
--
-- Locks the caller's profile first, so concurrent creates on one balance serialise
-- (never overdraw) and a repeated idempotency key finds the first batch (charged once).
create function public.create_generation_batch(
  style_keys text[],
  source_image_path text,
  custom_prompt text default null,
  idempotency_key text default null
) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  max_styles integer := private.setting_int('max_styles_per_batch');
  max_prompt integer := private.setting_int('max_custom_prompt_length');
  attempts integer := private.setting_int('max_attempts');  -- read once, not once per style
  requested integer := coalesce(cardinality(style_keys), 0);
  fingerprint text;
  existing record;
  missing text[];
  inactive text[];
  duplicated text[];
  cost integer;
  balance integer;
  new_batch uuid;
begin
  if requested = 0 then
    perform private.raise_error('empty_style_list', 400, 'Pick at least one style.');
  end if;
  if requested > max_styles then
    perform private.raise_error('too_many_styles', 400,
      format('A batch holds at most %s styles; %s were given.', max_styles, requested),
      jsonb_build_object('max', max_styles, 'given', requested));
  end if;
  if array_position(style_keys, null) is not null then
    perform private.raise_error('invalid_input', 400, 'style_keys must not contain null.',
      jsonb_build_object('field', 'style_keys'));
  end if;
  select array_agg(k order by k) into duplicated
    from (select k from unnest(style_keys) k group by k having count(*) > 1) d;
  if duplicated is not null then
    perform private.raise_error('duplicate_style', 400,
      'Each style may appear once in a batch: ' || array_to_string(duplicated, ', ') || '.',
      jsonb_build_object('style_keys', duplicated));
  end if;
  if source_image_path is null or btrim(source_image_path) = ''
     or char_length(source_image_path) > 1024 then
    perform private.raise_error('invalid_input', 400,
      'source_image_path must be a storage path of 1 to 1024 characters.',
      jsonb_build_object('field', 'source_image_path'));
  end if;
  if char_length(custom_prompt) > max_prompt then
    perform private.raise_error('prompt_too_long', 400,
      format('The custom prompt may be at most %s characters; it has %s.',
             max_prompt, char_length(custom_prompt)),
      jsonb_build_object('max', max_prompt, 'given', char_length(custom_prompt)));
  end if;
  if idempotency_key is not null and char_length(idempotency_key) not between 1 and 200 then
    perform private.raise_error('invalid_input', 400,
      'idempotency_key must be 1 to 200 characters.', jsonb_build_object('field', 'idempotency_key'));
  end if;

  select array_agg(k order by k) filter (where s.key is null),
         array_agg(k order by k) filter (where not s.is_active),
         sum(s.credit_cost)
    into missing, inactive, cost
    from unnest(style_keys) k
    left join public.styles s on s.key = k;
  if missing is not null then
    perform private.raise_error('unknown_style', 400,
      'Unknown style: ' || array_to_string(missing, ', ') || '.',
      jsonb_build_object('style_keys', missing));
  end if;
  if inactive is not null then
    perform private.raise_error('inactive_style', 400,
      'Style no longer offered: ' || array_to_string(inactive, ', ') || '.',
      jsonb_build_object('style_keys', inactive));
  end if;

  select p.total_credits into balance from public.profiles p where p.id = uid for update;
  if not found then
    perform private.raise_error('profile_not_found', 404, 'No profile for this user.');
  end if;

  fingerprint := md5(array_to_string(style_keys, ',') || '|' || source_image_path
                     || '|' || coalesce(custom_prompt, ''));
  if idempotency_key is not null then
    select b.id, b.request_fingerprint into existing
      from public.generation_batches b
     where b.user_id = uid and b.idempotency_key = create_generation_batch.idempotency_key;
    if found then
      if existing.request_fingerprint is distinct from fingerprint then
        perform private.raise_error('idempotency_conflict', 409,
          'This idempotency key was already used for a different request.',
          jsonb_build_object('batch_id', existing.id));
      end if;
      return existing.id;
    end if;
  end if;

  if balance < cost then
    perform private.raise_error('insufficient_credits', 402,
      format('This batch costs %s credits; the balance is %s.', cost, balance),
      jsonb_build_object('required', cost, 'available', balance));
  end if;

  insert into public.generation_batches
    (user_id, original_image_url, custom_prompt, credits_charged, idempotency_key, request_fingerprint)
  values (uid, source_image_path, nullif(btrim(custom_prompt), ''), cost,
          create_generation_batch.idempotency_key, fingerprint)
  returning id into new_batch;

  perform private.apply_credit_change(uid, 'debit', -cost, new_batch, null,
    format('batch of %s styles', requested));

  insert into public.generations
    (user_id, batch_id, style_key, position, custom_prompt, credit_cost, max_attempts)
  select uid, new_batch, s.key, k.ord, nullif(btrim(custom_prompt), ''), s.credit_cost, attempts
    from unnest(style_keys) with ordinality k(key, ord)
    join public.styles s on s.key = k.key;

  return new_batch;
end
$$;

-- The JSON shape of a gallery card ("X/Y photos"), for a whole page in one call: a SQL
-- function with a pinned search_path is never inlined, and one call per card cost about
-- half of list_batches' time. batch_summary (one batch, for get_batch) is a page of one.
create function private.batch_summaries(page public.generation_batches[]) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'id', b.id,
           'status', b.status,
           'original_image_url', b.original_image_url,
           'custom_prompt', b.custom_prompt,
           'total_count', b.total_count,
           'pending_count', b.pending_count,
           'processing_count', b.processing_count,
           'completed_count', b.completed_count,
           'failed_count', b.failed_count,
           'cancelled_count', b.cancelled_count,
           'progress', case when b.total_count = 0 then 0
                            else floor(100.0 * (b.completed_count + b.failed_count
                                                + b.cancelled_count)
                                       / b.total_count)::integer end,
           'credits_charged', b.credits_charged,
           'cover_image_url', b.cover_image_url,
           'cover_style_key', b.cover_style_key,
           'created_at', b.created_at,
           'updated_at', b.updated_at,
           'finished_at', b.finished_at) order by b.ordinality), '[]'::jsonb)
    from unnest(page) with ordinality as b
$$;

create function private.batch_summary(b public.generation_batches) returns jsonb
language sql stable
set search_path = ''
as $$
  select private.batch_summaries(array[b]) -> 0
$$;

-- The gallery: the caller's batches newest first, a keyset page at a time.
--
-- `after` is the opaque `next_cursor` of the previous page. Reads one index range of
-- page_size + 1 rows whatever the gallery's size or the page's depth. The first page uses
-- a sentinel cursor and the status filter has its own query, so the cached generic plan
-- always seeks with (user_id[, status], created_at, id) < cursor instead of filtering.
create function public.list_batches(
  status public.batch_status default null,
  page_size integer default 20,
  after text default null
) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  after_created timestamptz := 'infinity';
  after_id uuid := 'ffffffff-ffff-ffff-ffff-ffffffffffff';
  page public.generation_batches[];
  page_items jsonb;
begin
  if page_size is null or page_size not between 1 and 100 then
    perform private.raise_error('invalid_input', 400, 'page_size must be between 1 and 100.',
      jsonb_build_object('field', 'page_size'));
  end if;
  if after is not null then
    begin
      after_created := split_part(after, '|', 1)::timestamptz;
      after_id := split_part(after, '|', 2)::uuid;
    exception when others then
      perform private.raise_error('invalid_input', 400, 'after is not a cursor from list_batches.',
        jsonb_build_object('field', 'after'));
    end;
  end if;

  if list_batches.status is null then
    page := array(
      select b from public.generation_batches b
       where b.user_id = uid and (b.created_at, b.id) < (after_created, after_id)
       order by b.created_at desc, b.id desc
       limit page_size + 1);
  else
    page := array(
      select b from public.generation_batches b
       where b.user_id = uid and b.status = list_batches.status
         and (b.created_at, b.id) < (after_created, after_id)
       order by b.created_at desc, b.id desc
       limit page_size + 1);
  end if;

  page_items := private.batch_summaries(page[1:page_size]);

  return jsonb_build_object(
    'items', page_items,
    'next_cursor', case when cardinality(page) > page_size then
      (page_items -> -1 ->> 'created_at') || '|' || (page_items -> -1 ->> 'id') end);
end
$$;

-- The batch-detail screen: the batch and each item with its style, image and timings.
create function public.get_batch(batch_id uuid) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  result jsonb;
begin
  select private.batch_summary(b) || jsonb_build_object('items', coalesce((
           select jsonb_agg(jsonb_build_object(
                    'id', g.id,
                    'style_key', g.style_key,
                    'style_name', s.name,
                    'position', g.position,
                    'status', g.status,
                    'generated_image_url', g.generated_image_url,
                    'credit_cost', g.credit_cost,
                    'attempts', g.attempts,
                    'max_attempts', g.max_attempts,
                    'last_error', g.last_error,
                    'queued_at', g.queued_at,
                    'started_at', g.started_at,
                    'finished_at', g.finished_at,
                    'duration_ms', case when g.status = 'completed' then
                      floor(extract(epoch from g.finished_at - g.started_at) * 1000)::bigint end)
                  order by g.position)
             from public.generations g
             join public.styles s on s.key = g.style_key
            where g.batch_id = b.id), '[]'::jsonb))
    into result
    from public.generation_batches b
   where b.id = get_batch.batch_id and b.user_id = uid;
  if result is null then
    perform private.raise_error('batch_not_found', 404, 'No such batch for this user.',
      jsonb_build_object('batch_id', get_batch.batch_id));
  end if;
  return result;
end
$$;

-- The caller's batch, or batch_not_found (another user's batch looks exactly the same).
--
-- Deliberately takes no lock: every writer locks generations first and the batch row
-- second (through the counters trigger), and profiles last. Locking the batch up front
-- here would invert that order against a worker finishing an item, and deadlock.
create function private.own_batch(target uuid, uid uuid) returns public.generation_batches
language plpgsql stable
set search_path = ''
as $$
declare
  b public.generation_batches;
begin
  select * into b from public.generation_batches g where g.id = target and g.user_id = uid;
  if not found then
    perform private.raise_error('batch_not_found', 404, 'No such batch for this user.',
      jsonb_build_object('batch_id', target));
  end if;
  return b;
end
$$;

-- Cancel what has not started: pending items become cancelled and are refunded (by the
-- trigger); items already running finish normally.
create function public.cancel_batch(batch_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  b public.generation_batches := private.own_batch(cancel_batch.batch_id, uid);
  cancelled integer;
  refunded integer;
begin
  if b.status not in ('pending', 'processing') then
    perform private.raise_error('batch_finished', 409,
      format('This batch already ended (%s); nothing to cancel.', b.status),
      jsonb_build_object('batch_id', b.id, 'status', b.status));
  end if;
  with done as (
    update public.generations g
       set status = 'cancelled', finished_at = now(), updated_at = now()
     where g.batch_id = b.id and g.status = 'pending'
    returning g.credit_cost
  )
  select count(*), coalesce(sum(done.credit_cost), 0) into cancelled, refunded from done;
  select * into b from public.generation_batches g where g.id = b.id;
  return jsonb_build_object('batch_id', b.id, 'cancelled', cancelled,
                            'refunded', refunded, 'status', b.status);
end
$$;

-- Run the failed items again. They were refunded when they failed, so a retry charges
-- their cost again (one debit), and each is refunded again if it fails again: the
-- ledger stays exact and a retry is never free work.
create function public.retry_failed(batch_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  b public.generation_batches := private.own_batch(retry_failed.batch_id, uid);
  cost integer;
  items integer;
  balance integer;
begin
  -- Requeue first, charge second: generations, then the batch (trigger), then the
  -- profile is the lock order every writer follows. Not enough credits rolls it all back.
  with requeued as (
    update public.generations g
       set status = 'pending', attempts = 0, last_error = null, generated_image_url = null,
           queued_at = now(), run_after = now(), started_at = null, finished_at = null,
           lease_owner = null, lease_expires_at = null, updated_at = now()
     where g.batch_id = b.id and g.status = 'failed'
    returning g.credit_cost
  )
  select count(*), coalesce(sum(requeued.credit_cost), 0) into items, cost from requeued;
  if items = 0 then
    perform private.raise_error('nothing_to_retry', 409, 'This batch has no failed items.',
      jsonb_build_object('batch_id', b.id, 'status', b.status));
  end if;
  select p.total_credits into balance from public.profiles p where p.id = uid for update;
  if balance < cost then
    perform private.raise_error('insufficient_credits', 402,
      format('Retrying costs %s credits; the balance is %s.', cost, balance),
      jsonb_build_object('required', cost, 'available', balance));
  end if;
  if cost > 0 then
    perform private.apply_credit_change(uid, 'debit', -cost, b.id, null,
      format('retry of %s failed items', items));
  end if;
  select * into b from public.generation_batches g where g.id = b.id;
  return jsonb_build_object('batch_id', b.id, 'retried', items, 'charged', cost,
                            'status', b.status);
end
$$;

-- Delete a batch and its items. Items that had not finished are cancelled first, so
-- they are refunded; a worker's late result for them is discarded. Returns the stored
-- object paths so the caller can remove them from storage.
create function public.delete_batch(batch_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  b public.generation_batches := private.own_batch(delete_batch.batch_id, uid);
  refunded integer;
  paths text[];
begin
  with done as (
    update public.generations g
       set status = 'cancelled', finished_at = now(), updated_at = now(),
           lease_owner = null, lease_expires_at = null
     where g.batch_id = b.id and g.status in ('pending', 'processing')
    returning g.credit_cost
  )
  select coalesce(sum(done.credit_cost), 0) into refunded from done;
  select array_agg(g.generated_image_url order by g.position) filter (where g.generated_image_url is not null)
    into paths from public.generations g where g.batch_id = b.id;
  delete from public.generation_batches g where g.id = b.id;
  return jsonb_build_object('batch_id', b.id, 'deleted', true, 'refunded', refunded,
    'original_image_url', b.original_image_url, 'image_paths', coalesce(to_jsonb(paths), '[]'::jsonb));
end
$$;

-- The caller's totals for a stats screen.
create function public.batch_stats() returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  result jsonb;
begin
  with items as (
    select count(*) as items,
           count(*) filter (where g.status = 'completed') as completed,
           count(*) filter (where g.status = 'failed') as failed,
           count(*) filter (where g.status = 'cancelled') as cancelled,
           count(*) filter (where g.status = 'pending') as pending,
           count(*) filter (where g.status = 'processing') as processing,
           avg(extract(epoch from g.finished_at - g.started_at) * 1000)
             filter (where g.status = 'completed') as avg_ms
      from public.generations g where g.user_id = uid
  ), credits as (
    select coalesce(-sum(l.delta) filter (where l.kind = 'debit'), 0) as spent,
           coalesce(sum(l.delta) filter (where l.kind = 'refund'), 0) as refunded,
           coalesce(sum(l.delta) filter (where l.kind = 'grant'), 0) as granted
      from public.credit_ledger l where l.user_id = uid
  )
  select jsonb_build_object(
    'batches', (select count(*) from public.generation_batches b where b.user_id = uid),
    'items', i.items,
    'completed', i.completed,
    'failed', i.failed,
    'cancelled', i.cancelled,
    'pending', i.pending,
    'processing', i.processing,
    'success_rate', case when i.completed + i.failed = 0 then null
                         else round(i.completed::numeric / (i.completed + i.failed), 4) end,
    'avg_generation_ms', round(i.avg_ms)::bigint,
    'credits_spent', c.spent,
    'credits_refunded', c.refunded,
    'credits_granted', c.granted,
    'balance', (select p.total_credits from public.profiles p where p.id = uid))
    into result
    from items i, credits c;
  return result;
end
$$;

-- Only signed-in users call the user API (Supabase grants EXECUTE to anon by default).
revoke all on function
  public.create_generation_batch(text[], text, text, text),
  public.list_batches(public.batch_status, integer, text),
  public.get_batch(uuid),
  public.cancel_batch(uuid),
  public.retry_failed(uuid),
  public.delete_batch(uuid),
  public.batch_stats()
  from public, anon;
grant execute on function
  public.create_generation_batch(text[], text, text, text),
  public.list_batches(public.batch_status, integer, text),
  public.get_batch(uuid),
  public.cancel_batch(uuid),
  public.retry_failed(uuid),
  public.delete_batch(uuid),
  public.batch_stats()
  to authenticated;

revoke all on all functions in schema private from public, anon, authenticated;
-- The invoker-rights readers above run as the caller and need these harmless helpers.
grant usage on schema private to authenticated;
grant execute on function
  private.require_user(),
  private.raise_error(text, integer, text, jsonb, text),
  private.batch_summary(public.generation_batches),
  private.batch_summaries(public.generation_batches[])
  to authenticated, service_role;
