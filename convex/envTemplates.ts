// envTemplates: named sets of environment variables for container jobs. All internal: only
// the service reads and writes them.
import { v } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import { internalMutation, internalQuery, QueryCtx } from "./_generated/server";
import { fail } from "./model/jobs";
import {
  MAX_LIST,
  checkNameFree,
  templateFields,
  templatePatch,
  templateView,
  toTemplateView,
  unsetFields,
  withUnset,
} from "./model/containers";

async function templateDoc(ctx: QueryCtx, templateId: string): Promise<Doc<"envTemplates"> | null> {
  return ctx.db
    .query("envTemplates")
    .withIndex("by_templateId", (q) => q.eq("templateId", templateId))
    .unique();
}

export const create = internalMutation({
  args: { template: v.object({ templateId: v.string(), ...templateFields }) },
  returns: v.null(),
  handler: async (ctx, { template }) => {
    if (await templateDoc(ctx, template.templateId)) {
      fail("CONFLICT", `template ${template.templateId} exists`);
    }
    await checkNameFree(ctx, "envTemplates", template.name);
    await ctx.db.insert("envTemplates", template);
    return null;
  },
});

export const update = internalMutation({
  args: { templateId: v.string(), fields: templatePatch, unset: unsetFields },
  returns: templateView,
  handler: async (ctx, { templateId, fields, unset }) => {
    const template =
      (await templateDoc(ctx, templateId)) ?? fail("NOT_FOUND", `template ${templateId} not found`);
    if (fields.name !== undefined) {
      await checkNameFree(ctx, "envTemplates", fields.name, template._id);
    }
    const changes = { ...withUnset(fields, unset, templateFields), updatedAt: Date.now() };
    await ctx.db.patch(template._id, changes);
    return toTemplateView((await ctx.db.get(template._id))!);
  },
});

export const get = internalQuery({
  args: { templateId: v.string() },
  returns: v.union(templateView, v.null()),
  handler: async (ctx, { templateId }) => {
    const template = await templateDoc(ctx, templateId);
    return template ? toTemplateView(template) : null;
  },
});

export const getByName = internalQuery({
  args: { name: v.string() },
  returns: v.union(templateView, v.null()),
  handler: async (ctx, { name }) => {
    const template = await ctx.db
      .query("envTemplates")
      .withIndex("by_name", (q) => q.eq("name", name))
      .first();
    return template ? toTemplateView(template) : null;
  },
});

// By name, at most MAX_LIST templates.
export const list = internalQuery({
  args: {},
  returns: v.array(templateView),
  handler: async (ctx) =>
    (await ctx.db.query("envTemplates").withIndex("by_name").take(MAX_LIST)).map(toTemplateView),
});
