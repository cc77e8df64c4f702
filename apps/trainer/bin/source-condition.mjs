// Module resolve hook: prefer each workspace package's TypeScript source (`@tsformer/source`).
export async function resolve(specifier, context, next) {
  return next(specifier, { ...context, conditions: [...context.conditions, '@tsformer/source'] });
}
