-- The private Storage bucket for source photos and results, and who may touch which object.
--
-- Objects live under `<user_id>/...`: a user reads and writes only their own folder; the
-- worker uses the service role (which bypasses RLS). Applied only where Supabase Storage
-- exists (a hosted project, or `supabase start`); a plain PostgreSQL has no storage schema
-- and portraitkit keeps files in a local directory with the same paths instead.

do $$
begin
  if to_regclass('storage.objects') is null or to_regclass('storage.buckets') is null then
    raise notice 'no Supabase Storage here: bucket and policies skipped';
    return;
  end if;

  insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
  values ('portraits', 'portraits', false, 20 * 1024 * 1024,
          array['image/png', 'image/jpeg', 'image/webp'])
  on conflict (id) do nothing;

  create policy portraits_select_own on storage.objects
    for select to authenticated
    using (bucket_id = 'portraits' and (storage.foldername(name))[1] = (select auth.uid())::text);
  create policy portraits_insert_own on storage.objects
    for insert to authenticated
    with check (bucket_id = 'portraits' and (storage.foldername(name))[1] = (select auth.uid())::text);
  -- Uploads upsert (the same photo, or a retried result, lands on the same path).
  create policy portraits_update_own on storage.objects
    for update to authenticated
    using (bucket_id = 'portraits' and (storage.foldername(name))[1] = (select auth.uid())::text)
    with check (bucket_id = 'portraits' and (storage.foldername(name))[1] = (select auth.uid())::text);
  create policy portraits_delete_own on storage.objects
    for delete to authenticated
    using (bucket_id = 'portraits' and (storage.foldername(name))[1] = (select auth.uid())::text);
end
$$;
