-- The gallery page builds its cards in one call instead of one per batch.
--
-- A SQL function with a pinned search_path is never inlined, so calling
-- private.batch_summary once per row cost a function call (and a search_path switch) per
-- card: about half of list_batches' execution time for a page of 20. The card's shape is
-- now defined once, for a whole page, by private.batch_summaries; batch_summary (one
-- batch, used by get_batch) is that page of one.

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

create or replace function private.batch_summary(b public.generation_batches) returns jsonb
language sql stable
set search_path = ''
as $$
  select private.batch_summaries(array[b]) -> 0
$$;

create or replace function public.list_batches(
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

  -- The status filter has its own query so that the cached generic plan of each always
  -- seeks with (user_id[, status], created_at, id) < cursor instead of filtering.
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

revoke all on function private.batch_summaries(public.generation_batches[])
  from public, anon, authenticated;
grant execute on function private.batch_summaries(public.generation_batches[])
  to authenticated, service_role;
