-- The user API under attack: every argument validated by the function itself, storage
-- paths owned by the caller, a collision-free idempotency fingerprint, one lock order for
-- every writer, and no SECURITY DEFINER function in the exposed schema.
--
-- Released migrations are never edited: everything here replaces what earlier files made.
--
-- * The public user functions are SECURITY INVOKER wrappers; the privileged work is in
--   `private` definer functions that derive the user from auth.uid() themselves
--   (Supabase's Security Advisor, lint 0029, warns about definer functions that
--   `authenticated` may execute in an exposed schema; `private` is not exposed).
-- * Ids, the status filter and cursors are taken as text and parsed here, so a malformed
--   one is `invalid_input` (400) from the function, not a cast error (22P02) raised by
--   PostgREST or psycopg before the function runs. PostgREST calls functions by argument
--   names, so the JSON the app sends is unchanged.
-- * Lock order (docs/contract.md): generations in ascending id (or SKIP LOCKED, which
--   never waits), then their batches in ascending id (the counters trigger), then profiles
--   in ascending id. Every function below takes its items' locks in one statement
--   ordered by id before changing them.

-- Unicode white space and invisible format characters, as a regex class body. A prompt or
-- path made only of these is blank (U+3000 and U+00A0 look empty on a phone too).
create function private.blank_class() returns text
language sql immutable
set search_path = ''
as $$
  select '\s\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u3000\ufeff'
$$;

-- A text argument as the contract accepts it: null when allowed and absent, otherwise
-- not blank, no control character, at most max_length characters. Raises invalid_input
-- naming the field.
create function private.check_text(
  value text, field text, max_length integer, required boolean default true
) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if value is null then
    if required then
      perform private.raise_error('invalid_input', 400, format('%s is required.', field),
        jsonb_build_object('field', field, 'reason', 'missing'));
    end if;
    return;
  end if;
  if value ~ ('^[' || private.blank_class() || ']*$') then
    perform private.raise_error('invalid_input', 400, format('%s must not be blank.', field),
      jsonb_build_object('field', field, 'reason', 'blank'));
  end if;
  if value ~ '[\u0001-\u001f\u007f-\u009f]' then
    perform private.raise_error('invalid_input', 400,
      format('%s must not contain control characters.', field),
      jsonb_build_object('field', field, 'reason', 'control_character'));
  end if;
  if char_length(value) > max_length then
    perform private.raise_error('invalid_input', 400,
      format('%s may be at most %s characters; it has %s.', field, max_length, char_length(value)),
      jsonb_build_object('field', field, 'reason', 'too_long', 'max', max_length,
                         'given', char_length(value)));
  end if;
end
$$;

-- An id given as text: a uuid, or invalid_input naming the field.
create function private.parse_id(value text, field text) returns uuid
language plpgsql immutable
set search_path = ''
as $$
begin
  if value is null
     or value !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    perform private.raise_error('invalid_input', 400, format('%s is not a valid id.', field),
      jsonb_build_object('field', field, 'reason', 'not_an_id'));
  end if;
  return value::uuid;
end
$$;

-- A storage object path as the contract accepts it (docs/contract.md, "Paths"):
-- `<owner uuid>/<segment>[/<segment>...]`, at most 1024 characters, no empty, `.` or `..`
-- segment (so no leading, trailing or double slash), not blank, no backslash, no control character,
-- no white space but a plain space inside a segment, no invisible format character.
-- Returns the reason it is malformed, or null when it is well formed.
create function private.path_problem(path text) returns text
language sql immutable
set search_path = ''
as $$
  select case
    when path is null or path = '' then 'missing'
    when char_length(path) > 1024 then 'too_long'
    when path ~ ('^[' || private.blank_class() || ']+$') then 'blank'
    when path ~ '[\u0001-\u001f\u007f-\u009f]' then 'control_character'
    when path ~ ('[' || replace(private.blank_class(), '\s', '\t\n\v\f\r') || ']')
      then 'white_space'
    when path ~ '\\' then 'backslash'
    when path ~ '(^|/)(\.{1,2})?(/|$)' then 'empty_or_dot_segment'
    when path ~ '(^|/) | (/|$)' then 'space_at_segment_edge'
    when path !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/.'
      then 'no_owner_folder'
  end
$$;

-- A well-formed path in ``owner``'s folder: what the contract accepts and returns.
create function private.in_folder(path text, owner uuid) returns boolean
language sql immutable
set search_path = ''
as $$
  select private.path_problem(path) is null and starts_with(path, owner::text || '/')
$$;

-- The caller's own stored object, or an error: invalid_input when the path is malformed,
-- source_not_found when it is not under the caller's folder or (where Supabase Storage
-- exists) no object of the caller's has that name in the portraits bucket. Another user's
-- photo and a photo that does not exist answer the same.
create function private.require_own_object(path text, owner uuid, field text) returns void
language plpgsql stable
set search_path = ''
as $$
declare
  problem text := private.path_problem(path);
  found_it boolean;
begin
  if problem is not null then
    perform private.raise_error('invalid_input', 400,
      format('%s must be a storage path under your own folder (%s).', field,
             replace(problem, '_', ' ')),
      jsonb_build_object('field', field, 'reason', problem));
  end if;
  if not starts_with(path, owner::text || '/') then
    perform private.raise_error('source_not_found', 404, 'No such photo in your storage.',
      jsonb_build_object('field', field));
  end if;
  if to_regclass('storage.objects') is not null then
    -- Dynamic: a plain PostgreSQL has no storage schema. owner_id (text) is the current
    -- column; owner (uuid) the deprecated one that older projects still fill.
    execute 'select exists (select from storage.objects o
                             where o.bucket_id = ''portraits'' and o.name = $1
                               and coalesce(o.owner_id, o.owner::text) = $2::text)'
      into found_it using path, owner;
    if not found_it then
      perform private.raise_error('source_not_found', 404, 'No such photo in your storage.',
        jsonb_build_object('field', field));
    end if;
  end if;
end
$$;

-- What identifies a create request, for its idempotency key: a hash of the arguments as
-- a JSON array, so no two different requests share one (the first release joined them
-- with '|', and ('a|b', 'c') met ('a', 'b|c')). 'v2:' tells it from those older ones.
create function private.request_fingerprint(
  style_keys text[], source_image_path text, custom_prompt text
) returns text
language sql immutable
set search_path = ''
as $$
  select 'v2:' || encode(sha256(convert_to(
    jsonb_build_array(to_jsonb(style_keys), source_image_path, custom_prompt)::text, 'UTF8')), 'hex')
$$;

-- The first release's fingerprint, still compared for batches it recorded.
create function private.legacy_request_fingerprint(
  style_keys text[], source_image_path text, custom_prompt text
) returns text
language sql immutable
set search_path = ''
as $$
  select md5(array_to_string(style_keys, ',') || '|' || source_image_path
             || '|' || coalesce(custom_prompt, ''))
$$;

-- Trim Unicode white space from both ends; null when nothing is left.
create function private.trimmed(value text) returns text
language sql immutable
set search_path = ''
as $$
  select nullif(regexp_replace(value,
    '^[' || private.blank_class() || ']+|[' || private.blank_class() || ']+$', '', 'g'), '')
$$;

-- Pay once for several styles and get one batch holding one generation per style.
create function private.create_generation_batch(
  style_keys text[],
  source_image_path text,
  custom_prompt text,
  idempotency_key text
) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  max_styles integer := private.setting_int('max_styles_per_batch');
  max_prompt integer := private.setting_int('max_custom_prompt_length');
  attempts integer := private.setting_int('max_attempts');
  requested integer := coalesce(cardinality(style_keys), 0);
  prompt text := private.trimmed(custom_prompt);
  fingerprint text;
  existing record;
  missing text[];
  inactive text[];
  duplicated text[];
  cost integer;
  balance integer;
  new_batch uuid;
begin
  if array_ndims(style_keys) > 1 then
    perform private.raise_error('invalid_input', 400, 'style_keys must be a list of style keys.',
      jsonb_build_object('field', 'style_keys', 'reason', 'not_one_dimensional'));
  end if;
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
      jsonb_build_object('field', 'style_keys', 'reason', 'null_element'));
  end if;
  if exists (select from unnest(style_keys) k where char_length(k) > 64) then
    perform private.raise_error('invalid_input', 400, 'A style key has at most 64 characters.',
      jsonb_build_object('field', 'style_keys', 'reason', 'too_long'));
  end if;
  select array_agg(k order by k) into duplicated
    from (select k from unnest(style_keys) k group by k having count(*) > 1) d;
  if duplicated is not null then
    perform private.raise_error('duplicate_style', 400,
      'Each style may appear once in a batch: ' || array_to_string(duplicated, ', ') || '.',
      jsonb_build_object('style_keys', duplicated));
  end if;
  if custom_prompt is not null and prompt is not null then
    perform private.check_text(prompt, 'custom_prompt', 100000);
    if char_length(prompt) > max_prompt then
      perform private.raise_error('prompt_too_long', 400,
        format('The custom prompt may be at most %s characters; it has %s.',
               max_prompt, char_length(prompt)),
        jsonb_build_object('max', max_prompt, 'given', char_length(prompt)));
    end if;
  end if;
  perform private.check_text(idempotency_key, 'idempotency_key', 200, false);

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

  perform private.require_own_object(source_image_path, uid, 'source_image_path');

  -- The profile first: concurrent creates on one balance serialise (never overdraw) and
  -- a repeated idempotency key finds the first batch (charged once). New rows only
  -- follow, so this never waits on a batch or an item (docs/contract.md, lock order).
  select p.total_credits into balance from public.profiles p where p.id = uid for update;
  if not found then
    perform private.raise_error('profile_not_found', 404, 'No profile for this user.');
  end if;

  fingerprint := private.request_fingerprint(style_keys, source_image_path, prompt);
  if idempotency_key is not null then
    select b.id, b.request_fingerprint into existing
      from public.generation_batches b
     where b.user_id = uid and b.idempotency_key = create_generation_batch.idempotency_key;
    if found then
      if existing.request_fingerprint is distinct from fingerprint
         and existing.request_fingerprint is distinct from private.legacy_request_fingerprint(
               style_keys, source_image_path, custom_prompt) then
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
  values (uid, source_image_path, prompt, cost, create_generation_batch.idempotency_key, fingerprint)
  returning id into new_batch;

  perform private.apply_credit_change(uid, 'debit', -cost, new_batch, null,
    format('batch of %s styles', requested));

  insert into public.generations
    (user_id, batch_id, style_key, position, custom_prompt, credit_cost, max_attempts)
  select uid, new_batch, s.key, k.ord, prompt, s.credit_cost, attempts
    from unnest(style_keys) with ordinality k(key, ord)
    join public.styles s on s.key = k.key
   order by k.ord;  -- queue order within the batch follows the user's order

  return new_batch;
end
$$;

create or replace function public.create_generation_batch(
  style_keys text[],
  source_image_path text,
  custom_prompt text default null,
  idempotency_key text default null
) returns uuid
language sql
security invoker
set search_path = ''
as $$
  select private.create_generation_batch(style_keys, source_image_path, custom_prompt,
                                         idempotency_key)
$$;

-- The gallery. `status` and `after` are text so a bad one is invalid_input, not 22P02.
drop function public.list_batches(public.batch_status, integer, text);
create function public.list_batches(
  status text default null,
  page_size integer default 20,
  after text default null
) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  wanted public.batch_status;
  after_created timestamptz := 'infinity';
  after_id uuid := 'ffffffff-ffff-ffff-ffff-ffffffffffff';
  page public.generation_batches[];
  page_items jsonb;
begin
  if page_size is null or page_size not between 1 and 100 then
    perform private.raise_error('invalid_input', 400, 'page_size must be between 1 and 100.',
      jsonb_build_object('field', 'page_size'));
  end if;
  if list_batches.status is not null then
    if list_batches.status <> all (enum_range(null::public.batch_status)::text[]) then
      perform private.raise_error('invalid_input', 400,
        'status must be one of: ' || array_to_string(enum_range(null::public.batch_status), ', ') || '.',
        jsonb_build_object('field', 'status',
                           'allowed', to_jsonb(enum_range(null::public.batch_status))));
    end if;
    wanted := list_batches.status::public.batch_status;
  end if;
  if after is not null then
    -- The cursor is `<created_at>|<id>`, made by this function; anything else is refused.
    if char_length(after) > 100 or split_part(after, '|', 3) <> ''
       or split_part(after, '|', 1) !~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?([+-]\d\d(:\d\d)?|Z)$' then
      perform private.raise_error('invalid_input', 400, 'after is not a cursor from list_batches.',
        jsonb_build_object('field', 'after'));
    end if;
    begin
      after_created := split_part(after, '|', 1)::timestamptz;
      after_id := private.parse_id(split_part(after, '|', 2), 'after');
    exception when others then
      perform private.raise_error('invalid_input', 400, 'after is not a cursor from list_batches.',
        jsonb_build_object('field', 'after'));
    end;
  end if;

  if wanted is null then
    page := array(
      select b from public.generation_batches b
       where b.user_id = uid and (b.created_at, b.id) < (after_created, after_id)
       order by b.created_at desc, b.id desc
       limit page_size + 1);
  else
    page := array(
      select b from public.generation_batches b
       where b.user_id = uid and b.status = wanted
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

-- The batch-detail screen.
create function private.batch_detail(target uuid, uid uuid) returns jsonb
language sql stable
set search_path = ''
as $$
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
    from public.generation_batches b
   where b.id = target and b.user_id = uid
$$;

drop function public.get_batch(uuid);
create function public.get_batch(batch_id text) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  target uuid := private.parse_id(get_batch.batch_id, 'batch_id');
  result jsonb := private.batch_detail(target, uid);
begin
  if result is null then
    perform private.raise_error('batch_not_found', 404, 'No such batch for this user.',
      jsonb_build_object('batch_id', target));
  end if;
  return result;
end
$$;

-- Lock the given generations in ascending id order: the first step of every writer that
-- changes existing items, so two writers never wait on each other's items in a cycle.
create function private.lock_generations(ids uuid[]) returns void
language plpgsql volatile
set search_path = ''
as $$
begin
  perform from public.generations g where g.id = any (ids) order by g.id for update;
end
$$;

-- Cancel what has not started (docs/contract.md). Items first, in id order, then the
-- batch (through the counters trigger), then the profile (refunds).
create function private.cancel_batch(target uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  b public.generation_batches := private.own_batch(target, uid);
  locked uuid[];
  cancelled integer;
  refunded integer;
begin
  if b.status not in ('pending', 'processing') then
    perform private.raise_error('batch_finished', 409,
      format('This batch already ended (%s); nothing to cancel.', b.status),
      jsonb_build_object('batch_id', b.id, 'status', b.status));
  end if;
  -- Listed and locked in one statement, and only those changed: an item that becomes
  -- pending meanwhile would otherwise be locked later, out of id order.
  locked := array(select g.id from public.generations g
                   where g.batch_id = b.id and g.status = 'pending' order by g.id for update);
  with done as (
    update public.generations g
       set status = 'cancelled', finished_at = now(), updated_at = now()
     where g.id = any (locked) and g.status = 'pending'
    returning g.credit_cost
  )
  select count(*), coalesce(sum(done.credit_cost), 0) into cancelled, refunded from done;
  select * into b from public.generation_batches g where g.id = b.id;
  return jsonb_build_object('batch_id', b.id, 'cancelled', cancelled,
                            'refunded', refunded, 'status', b.status);
end
$$;

-- Run the failed items again, charging their cost again (docs/contract.md).
create function private.retry_failed(target uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  uid uuid := private.require_user();
  b public.generation_batches := private.own_batch(target, uid);
  locked uuid[];
  cost integer;
  items integer;
  balance integer;
begin
  -- A batch of the first release may name a source that is not the caller's: it is not
  -- run again (the worker refuses such a source too, and the items ended refunded).
  perform private.require_own_object(b.original_image_url, uid, 'source_image_path');
  locked := array(select g.id from public.generations g
                   where g.batch_id = b.id and g.status = 'failed' order by g.id for update);
  with requeued as (
    update public.generations g
       set status = 'pending', attempts = 0, last_error = null, generated_image_url = null,
           queued_at = now(), run_after = now(), started_at = null, finished_at = null,
           lease_owner = null, lease_expires_at = null, updated_at = now()
     where g.id = any (locked) and g.status = 'failed'
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

-- Delete a batch and its items; unfinished items are cancelled (and refunded) first.
-- Every item is locked up front, in id order: the cascading delete at the end would
-- otherwise lock them after the batch row, against the lock order.
-- Returns the stored paths the caller may remove: only well-formed paths in the caller's
-- own folder, whatever a row says.
create function private.delete_batch(target uuid) returns jsonb
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

drop function public.cancel_batch(uuid);
drop function public.retry_failed(uuid);
drop function public.delete_batch(uuid);

create function public.cancel_batch(batch_id text) returns jsonb
language sql
security invoker
set search_path = ''
as $$
  select private.cancel_batch(private.parse_id(batch_id, 'batch_id'))
$$;

create function public.retry_failed(batch_id text) returns jsonb
language sql
security invoker
set search_path = ''
as $$
  select private.retry_failed(private.parse_id(batch_id, 'batch_id'))
$$;

create function public.delete_batch(batch_id text) returns jsonb
language sql
security invoker
set search_path = ''
as $$
  select private.delete_batch(private.parse_id(batch_id, 'batch_id'))
$$;

-- The worker's writers take their items' locks in id order before changing them, so a
-- heartbeat and a completion of overlapping items never deadlock (they did: issue 9).
-- heartbeat_generations and complete_generations follow in the fair-queue migration.
create or replace function public.release_generations(worker_id text, generation_ids uuid[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  released integer;
begin
  perform private.require_worker_id(worker_id);
  perform private.lock_generations(generation_ids);
  update public.generations g
     set status = 'pending', attempts = greatest(g.attempts - 1, 0), started_at = null,
         run_after = now(), lease_owner = null, lease_expires_at = null, updated_at = now()
   where g.id = any (generation_ids) and g.status = 'processing'
     and g.lease_owner = release_generations.worker_id;
  get diagnostics released = row_count;
  return released;
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

-- Grants: the user API to signed-in users only (Supabase's default privileges give every
-- new function in public to anon too), and the private helpers the invoker wrappers and
-- readers call. The definer functions in private check auth.uid() themselves.
revoke all on function
  public.create_generation_batch(text[], text, text, text),
  public.list_batches(text, integer, text),
  public.get_batch(text),
  public.cancel_batch(text),
  public.retry_failed(text),
  public.delete_batch(text)
  from public, anon;
grant execute on function
  public.create_generation_batch(text[], text, text, text),
  public.list_batches(text, integer, text),
  public.get_batch(text),
  public.cancel_batch(text),
  public.retry_failed(text),
  public.delete_batch(text)
  to authenticated;

revoke all on all functions in schema private from public, anon, authenticated;
grant execute on function
  private.require_user(),
  private.raise_error(text, integer, text, jsonb, text),
  private.batch_summary(public.generation_batches),
  private.batch_summaries(public.generation_batches[]),
  private.batch_detail(uuid, uuid),
  private.parse_id(text, text),
  private.create_generation_batch(text[], text, text, text),
  private.cancel_batch(uuid),
  private.retry_failed(uuid),
  private.delete_batch(uuid)
  to authenticated, service_role;
